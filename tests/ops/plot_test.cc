// The one plotter (ops/observe/plot.h): what each chart draws, counted from its SVG.
#include "ops/observe/plot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <regex>
#include <string>

namespace fedlora::observe::plot {
namespace {

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + what.size())) ++n;
  return n;
}

Series Line(std::string name, std::vector<std::pair<double, double>> points) {
  Series s;
  s.name = std::move(name);
  s.points = std::move(points);
  return s;
}

long DataPoints(const std::string& svg) {
  std::smatch m;
  return std::regex_search(svg, m, std::regex("data-points=\"(\\d+)\"")) ? std::stol(m[1]) : -1;
}

TEST(PlotTest, ALineChartDrawsEveryDrawablePointAndSaysHowMany) {
  Figure f;
  f.id = "acc";
  f.title = "accuracy <by> bytes & more";
  f.x.label = "bytes";
  f.x.log = true;
  f.x.format = [](double b) { return std::to_string(static_cast<long>(b)); };
  f.y.label = "accuracy";
  f.series.push_back(Line("fedavg", {{10, 0.1}, {100, 0.2}, {1000, 0.3}}));
  // On a log axis a zero and a negative x cannot be drawn; a NaN y neither.
  f.series.push_back(Line("ffa", {{0, 0.1}, {-5, 0.2}, {50, NAN}, {500, 0.25}}));
  const std::string svg = LineChart(f);
  EXPECT_EQ(svg.rfind("<svg id=\"acc\" ", 0), 0u) << "the id comes first, as the dashboard's readers expect";
  EXPECT_EQ(DataPoints(svg), 4);
  EXPECT_EQ(Count(svg, "<polyline"), 2u);
  EXPECT_EQ(Count(svg, "<circle"), 4u);  // few points: a dot each
  EXPECT_NE(svg.find(">fedavg<"), std::string::npos);
  EXPECT_NE(svg.find(">ffa<"), std::string::npos);
  EXPECT_NE(svg.find("accuracy &lt;by&gt; bytes &amp; more"), std::string::npos);
  // Decades from 10 to 1000, labelled by the axis' format.
  for (const char* tick : {">10<", ">100<", ">1000<"}) EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  EXPECT_EQ(svg.find("NaN"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
}

TEST(PlotTest, MarksRulesAndAnEmptyChart) {
  Figure f;
  f.x.label = "version";
  f.y.label = "accuracy";
  f.y.from_zero = true;
  f.series.push_back(Line("", {{0, 0.5}, {1, 0.6}, {2, 0.7}, {3, 0.65}}));
  f.x_marks = {2};
  f.y_rule = {0.8, "target 0.80"};
  const std::string svg = LineChart(f);
  EXPECT_EQ(DataPoints(svg), 4);
  EXPECT_EQ(Count(svg, "stroke-dasharray=\"4 3\""), 1u);  // the mark
  EXPECT_NE(svg.find(">target 0.80<"), std::string::npos);
  EXPECT_EQ(svg.find("<svg id="), std::string::npos) << "no id given";
  EXPECT_NE(svg.find(">0<"), std::string::npos) << "the y axis starts at zero";

  Figure none;
  none.empty_message = "no differential privacy in this run";
  none.series.push_back(Line("", {}));
  const std::string empty = LineChart(none);
  EXPECT_EQ(DataPoints(empty), 0);
  EXPECT_EQ(Count(empty, "<polyline"), 0u);
  EXPECT_NE(empty.find(">no differential privacy in this run<"), std::string::npos);
  EXPECT_EQ(empty.find("text-anchor=\"end\" fill=\"#555\""), std::string::npos) << "no tick labels without data";
}

TEST(PlotTest, ABarChartDrawsOneBarPerLabel) {
  Figure f;
  f.id = "clients";
  f.y.label = "updates folded";
  const std::string svg = BarChart(f, {"w0", "w1", "w2"}, {5, 12, 0});
  EXPECT_EQ(DataPoints(svg), 3);
  EXPECT_EQ(Count(svg, "fill=\"#5a9bd4\""), 3u);
  for (const char* label : {">w0<", ">w1<", ">w2<"}) EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_EQ(svg.find("height=\"-"), std::string::npos) << "no negative heights";
  const std::string empty = BarChart(f, {}, {});
  EXPECT_EQ(DataPoints(empty), 0);
  EXPECT_NE(empty.find(">no data yet<"), std::string::npos);
}

TEST(PlotTest, CategoriesReplaceNumericTicks) {
  Figure f;
  f.x.label = "budget";
  f.x.categories = {{0, "no DP"}, {1, "eps 8"}, {2, "eps 1"}};
  f.y.label = "accuracy";
  f.series.push_back(Line("fedavg", {{0, 0.7}, {1, 0.68}, {2, 0.6}}));
  const std::string svg = LineChart(f);
  EXPECT_EQ(DataPoints(svg), 3);
  for (const char* label : {">no DP<", ">eps 8<", ">eps 1<"}) EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_EQ(svg.find(">0.5<"), std::string::npos) << "no numeric x ticks between the categories";
}

}  // namespace
}  // namespace fedlora::observe::plot
