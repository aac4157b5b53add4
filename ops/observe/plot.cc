#include "ops/observe/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>

namespace fedlora::observe::plot {
namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr size_t kDotsUpTo = 400;

std::string Number(double x) { return fmt::format("{:.4g}", x); }

// A grid step of 1, 2 or 5 times a power of ten giving about five lines over `span`.
double NiceStep(double span) {
  const double raw = span / 5;
  const double decade = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (raw <= m * decade * 1.0000001) return m * decade;
  }
  return 10 * decade;
}

// An axis resolved against the data: the drawn range, the mapping to pixels and the ticks.
struct Scale {
  double lo = 0, hi = 1;  // in axis units (log10 of the value on a log axis)
  double p0 = 0, p1 = 1;  // pixels of lo and hi
  bool log = false;
  std::vector<std::pair<double, std::string>> ticks;  // (value, label)

  bool Drawable(double v) const { return std::isfinite(v) && (!log || v > 0); }
  double operator()(double v) const {
    const double u = log ? std::log10(v) : v;
    return p0 + (u - lo) / (hi - lo) * (p1 - p0);
  }
};

Scale Resolve(const Axis& axis, const std::vector<double>& values, double p0, double p1) {
  Scale s;
  s.log = axis.log;
  s.p0 = p0;
  s.p1 = p1;
  double lo = INFINITY, hi = -INFINITY;
  for (double v : values) {
    if (!s.Drawable(v)) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  for (const auto& [v, label] : axis.categories) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!(lo <= hi)) lo = hi = s.log ? 1 : 0;  // nothing to draw: any range will do
  if (axis.min) lo = *axis.min;
  if (axis.max) hi = *axis.max;
  auto label = [&axis](double v) { return axis.format ? axis.format(v) : Number(v); };
  if (s.log) {
    s.lo = std::floor(std::log10(lo));
    s.hi = std::ceil(std::log10(hi));
    if (s.hi <= s.lo) s.hi = s.lo + 1;
    for (double e = s.lo; e <= s.hi + 1e-9; e += 1) s.ticks.emplace_back(std::pow(10.0, e), label(std::pow(10.0, e)));
  } else {
    if (axis.from_zero) lo = std::min(lo, 0.0);
    if (hi <= lo) hi = lo + (lo == 0 ? 1 : std::abs(lo) * 0.1);
    const double step = axis.step.value_or(NiceStep(hi - lo));
    s.lo = axis.min ? lo : std::floor(lo / step + 1e-9) * step;
    s.hi = axis.max ? hi : std::ceil(hi / step - 1e-9) * step;
    if (s.hi <= s.lo) s.hi = s.lo + step;
    if (axis.categories.empty()) {
      for (double t = std::ceil(s.lo / step - 1e-9) * step; t <= s.hi + step * 1e-6; t += step) {
        s.ticks.emplace_back(std::abs(t) < step * 1e-9 ? 0.0 : t, label(std::abs(t) < step * 1e-9 ? 0.0 : t));
      }
    }
  }
  if (!axis.categories.empty() && !axis.min && !axis.max) {  // half a slot of room at either end
    s.lo = lo - 0.25;
    s.hi = hi + 0.25;
  }
  for (const auto& c : axis.categories) s.ticks.push_back(c);
  return s;
}

struct Frame {
  double left = 60, right, top, bottom;
};

Frame Margins(const Figure& f, bool legend) {
  return {60, f.width - (legend ? 170 : 16), f.title.empty() ? 12.0 : 36.0, f.height - 48};
}

std::string Open(const Figure& f, size_t points) {
  std::string svg = "<svg ";
  if (!f.id.empty()) svg += fmt::format("id=\"{}\" ", Escape(f.id));
  svg += fmt::format(
      "xmlns=\"http://www.w3.org/2000/svg\" data-points=\"{}\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      points, f.width, f.height, f.width, f.height);
  if (!f.title.empty()) svg += fmt::format("<text x=\"60\" y=\"22\" font-size=\"14\">{}</text>\n", Escape(f.title));
  return svg;
}

// Grid lines, tick labels (not on an empty chart: they would describe nothing) and the axis titles.
std::string Axes(const Figure& f, const Frame& fr, const Scale& sx, const Scale& sy, bool x_grid, bool ticks = true) {
  std::string svg;
  for (const auto& [v, label] : sx.ticks) {
    if (!ticks) break;
    if (!sx.Drawable(v)) continue;
    const double x = sx(v);
    if (x_grid) svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>", x, fr.top, fr.bottom);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n", x, fr.bottom + 16,
                       Escape(label));
  }
  for (const auto& [v, label] : sy.ticks) {
    if (!ticks) break;
    if (!sy.Drawable(v)) continue;
    const double y = sy(v);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#e4e4e4\"/>"
                       "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\" fill=\"#555\">{5}</text>\n",
                       fr.left, y, fr.right, fr.left - 6, y + 4, Escape(label));
  }
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#999\"/>"
                     "<line x1=\"{0}\" y1=\"{3}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#999\"/>\n",
                     fr.left, fr.bottom, fr.right, fr.top);
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (fr.left + fr.right) / 2,
                     f.height - 10, Escape(f.x.label));
  const double mid = (fr.top + fr.bottom) / 2;
  svg += fmt::format("<text x=\"16\" y=\"{0:.1f}\" transform=\"rotate(-90 16 {0:.1f})\" text-anchor=\"middle\">{1}</text>\n",
                     mid, Escape(f.y.label));
  return svg;
}

std::string EmptyNote(const Figure& f, const Frame& fr) {
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#999\" font-size=\"13\">{}</text>\n",
                     (fr.left + fr.right) / 2, (fr.top + fr.bottom) / 2, Escape(f.empty_message));
}

}  // namespace

std::string Escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string LineChart(const Figure& f) {
  const bool legend = std::any_of(f.series.begin(), f.series.end(), [](const Series& s) { return !s.name.empty(); });
  const Frame fr = Margins(f, legend);
  std::vector<double> xs, ys;
  for (const auto& s : f.series) {
    for (const auto& [x, y] : s.points) {
      xs.push_back(x);
      ys.push_back(y);
    }
  }
  if (f.y_rule) ys.push_back(f.y_rule->first);
  const Scale sx = Resolve(f.x, xs, fr.left, fr.right);
  const Scale sy = Resolve(f.y, ys, fr.bottom, fr.top);
  size_t drawn = 0;
  std::string body;
  for (size_t i = 0; i < f.series.size(); ++i) {
    const Series& s = f.series[i];
    const std::string color = s.color.empty() ? kPalette[i % std::size(kPalette)] : s.color;
    std::string points, dots;
    size_t n = 0;
    for (const auto& [x, y] : s.points) {
      if (!sx.Drawable(x) || !sy.Drawable(y)) continue;
      points += fmt::format("{:.1f},{:.1f} ", sx(x), sy(y));
      ++n;
    }
    if (s.dots || n <= kDotsUpTo) {
      for (const auto& [x, y] : s.points) {
        if (sx.Drawable(x) && sy.Drawable(y)) {
          dots += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>", sx(x), sy(y), color);
        }
      }
    }
    drawn += n;
    if (n > 0) {
      body += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n{}\n", color,
                          points, dots);
    }
    if (legend) {
      const double ly = fr.top + 10 + 18.0 * static_cast<double>(i);
      body += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"{3}\" stroke-width=\"3\"/>"
                          "<text x=\"{4}\" y=\"{5:.1f}\">{6}</text>\n",
                          fr.right + 12, ly, fr.right + 36, color, fr.right + 42, ly + 4, Escape(s.name));
    }
  }
  std::string svg = Open(f, drawn) + Axes(f, fr, sx, sy, /*x_grid=*/true, /*ticks=*/drawn > 0);
  for (double m : f.x_marks) {
    if (!sx.Drawable(m)) continue;
    svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#c0392b\" "
                       "stroke-dasharray=\"4 3\"/>\n",
                       sx(m), fr.top, fr.bottom);
  }
  if (f.y_rule && sy.Drawable(f.y_rule->first)) {
    const double y = sy(f.y_rule->first);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#444\" stroke-dasharray=\"4 4\"/>"
                       "<text x=\"{2}\" y=\"{3:.1f}\" text-anchor=\"end\">{4}</text>\n",
                       fr.left, y, fr.right, y - 4, Escape(f.y_rule->second));
  }
  if (drawn == 0) svg += EmptyNote(f, fr);
  return svg + body + "</svg>\n";
}

std::string BarChart(const Figure& f, const std::vector<std::string>& labels, const std::vector<double>& values) {
  const Frame fr = Margins(f, false);
  const size_t n = std::min(labels.size(), values.size());
  Figure framed = f;
  framed.x.categories.clear();
  const double slot = n ? (fr.right - fr.left) / static_cast<double>(n) : 1;
  Axis y = f.y;
  y.from_zero = true;
  const Scale sy = Resolve(y, values, fr.bottom, fr.top);
  // Categories sit at the centre of each slot; more than 24 labels are left out (too dense).
  Scale sx;
  sx.lo = 0;
  sx.hi = static_cast<double>(std::max<size_t>(n, 1));
  sx.p0 = fr.left;
  sx.p1 = fr.right;
  if (n <= 24) {
    for (size_t i = 0; i < n; ++i) sx.ticks.emplace_back(static_cast<double>(i) + 0.5, labels[i]);
  }
  std::string svg = Open(f, n) + Axes(framed, fr, sx, sy, /*x_grid=*/false, /*ticks=*/n > 0);
  for (size_t i = 0; i < n; ++i) {
    const double top = sy(std::max(values[i], sy.lo));
    svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#5a9bd4\"/>\n",
                       fr.left + slot * (static_cast<double>(i) + 0.1), top, slot * 0.8, std::max(0.0, fr.bottom - top));
  }
  if (n == 0) svg += EmptyNote(f, fr);
  return svg + "</svg>\n";
}

}  // namespace fedlora::observe::plot
