// fedlora's one plotter: line and bar charts as self-contained SVG (no scripts, no styles from
// elsewhere), for `fedlora compare` (accuracy against uploaded bytes, and against the privacy
// budget) and the dashboard (drawn on the server, so the page holds no drawing code).
// Every chart's <svg> carries `data-points="N"`: the number of points (or bars) it drew, which
// tests read back.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fedlora::observe::plot {

struct Axis {
  std::string label;
  bool log = false;                       // log10 scale (only positive values are drawn)
  std::optional<double> min, max;         // unset: the data's range (a log axis: whole decades)
  bool from_zero = false;                 // a linear axis starts at 0 whatever the data
  std::optional<double> step;             // grid line spacing of a linear axis (unset: about 5 lines)
  // Tick labels; unset: a compact number ("0.85", "1200", "3.5e+06").
  std::function<std::string(double)> format;
  // Category labels at given positions, instead of numeric ticks (e.g. "no DP", "eps 8").
  std::vector<std::pair<double, std::string>> categories;
};

struct Series {
  std::string name;                         // legend entry (no legend when only one unnamed series)
  std::vector<std::pair<double, double>> points;
  std::string color;                        // empty: the palette's next colour
  bool dots = false;                        // a dot at each point (always drawn up to 400 points)
};

struct Figure {
  std::string id;                           // the <svg> id (empty: none)
  std::string title;                        // drawn above the plot (empty: none)
  double width = 760, height = 460;
  Axis x, y;
  std::vector<Series> series;
  std::vector<double> x_marks;              // dashed vertical lines (the dashboard's rollbacks)
  std::optional<std::pair<double, std::string>> y_rule;  // a dashed horizontal line and its label
  std::string empty_message = "no data yet";             // shown when there is nothing to draw
};

// Lines through each series' points, in the order given.
std::string LineChart(const Figure& figure);

// One bar per label, heights from zero; `figure.series` and `figure.x` are not used (the labels
// are the categories), `figure.y` is.
std::string BarChart(const Figure& figure, const std::vector<std::string>& labels, const std::vector<double>& values);

// "&amp;", "&lt;", ... for text placed in SVG or HTML.
std::string Escape(const std::string& text);

}  // namespace fedlora::observe::plot
