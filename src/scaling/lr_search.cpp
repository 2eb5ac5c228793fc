// The learning-rate search's analysis (lr_search.h): curves, their optima and flat ranges,
// the rule across sizes, and the Markdown and JSON that `moba plot lr` writes.
#include "scaling/lr_search.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "scaling/curves.h"
#include "scaling/plot.h"

namespace moba::scaling {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

std::string si(double x) {
  const char* unit[] = {"", "k", "M", "B", "T"};
  int u = 0;
  while (std::fabs(x) >= 1000.0 && u < 4) x /= 1000.0, ++u;
  return fmt(u == 0 ? "%.0f" : (x < 10 ? "%.2f" : "%.1f"), x) + unit[u];
}

// The initial loss a final loss is compared with: the first finite training loss, else the
// loss of a uniform prediction (ln V), else none (NaN).
double initial_loss(const Run& r) {
  for (const TrainPoint& p : r.train)
    if (std::isfinite(p.loss)) return p.loss;
  return r.info.vocab_size > 1 ? std::log(static_cast<double>(r.info.vocab_size)) : kNaN;
}

// A run's warm-up fraction: the value its name carries when a search named it
// ("...-wu0.015", plan.h) and the steps agree, else the simplest one its steps give.
double warmup_fraction_for(const RunInfo& info) {
  const size_t at = info.name.rfind("-wu");
  if (at != std::string::npos && info.steps > 0) {
    const std::string text = info.name.substr(at + 3);
    char* end = nullptr;
    const double f = std::strtod(text.c_str(), &end);
    if (!text.empty() && end == text.c_str() + text.size() && f >= 0 &&
        std::llround(f * static_cast<double>(info.steps)) == info.warmup_steps)
      return f;
  }
  return warmup_fraction_of(info.warmup_steps, info.steps);
}

LrPoint point_of(const Run& r) {
  LrPoint p;
  p.run = r.info.name;
  p.lr = r.info.lr;
  if (const ValPoint* v = r.last_val()) p.loss = v->loss;
  const double initial = initial_loss(r);
  if (r.failed())
    p.state = "failed";
  else if (r.running())
    p.state = "running";
  else if (r.val.empty())
    p.state = "no validation";
  else if (!std::isfinite(p.loss) || (std::isfinite(initial) && p.loss > initial))
    p.state = "diverged";
  return p;
}

// Least-squares parabola y = a x^2 + b x + c through (x, y); false when singular.
bool parabola(const std::vector<double>& x, const std::vector<double>& y, double& a, double& b,
              double& c) {
  // Normal equations of the 3 x 3 system, solved by Cramer's rule on centred x.
  const double n = static_cast<double>(x.size());
  double mx = 0;
  for (double v : x) mx += v / n;
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0, t0 = 0, t1 = 0, t2 = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = x[i] - mx;
    s1 += u, s2 += u * u, s3 += u * u * u, s4 += u * u * u * u;
    t0 += y[i], t1 += u * y[i], t2 += u * u * y[i];
  }
  const double m[3][3] = {{s4, s3, s2}, {s3, s2, s1}, {s2, s1, n}};
  const double r[3] = {t2, t1, t0};
  auto det = [](const double (&q)[3][3]) {
    return q[0][0] * (q[1][1] * q[2][2] - q[1][2] * q[2][1]) -
           q[0][1] * (q[1][0] * q[2][2] - q[1][2] * q[2][0]) +
           q[0][2] * (q[1][0] * q[2][1] - q[1][1] * q[2][0]);
  };
  const double d = det(m);
  if (!(std::fabs(d) > 1e-300)) return false;
  double sol[3];
  for (int k = 0; k < 3; ++k) {
    double q[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) q[i][j] = j == k ? r[i] : m[i][j];
    sol[k] = det(q) / d;
  }
  // Back from u = x - mx: a u^2 + b u + c = a x^2 + (b - 2 a mx) x + (a mx^2 - b mx + c).
  a = sol[0];
  b = sol[1] - 2 * sol[0] * mx;
  c = sol[0] * mx * mx - sol[1] * mx + sol[2];
  return true;
}

void fit_curve(LrCurve& cv, double tolerance) {
  std::vector<int> ok;
  for (size_t i = 0; i < cv.points.size(); ++i)
    if (cv.points[i].ok()) ok.push_back(static_cast<int>(i));
  if (ok.empty()) return;
  size_t k = 0;  // position of the best in `ok`
  for (size_t i = 1; i < ok.size(); ++i)
    if (cv.points[ok[i]].loss < cv.points[ok[k]].loss) k = i;
  cv.best = ok[k];
  const double best = cv.points[cv.best].loss;
  // Flat range: contiguous ok neighbours within the tolerance (a non-ok point between two
  // good ones ends it: the curve is not known to be flat there).
  int lo = cv.best, hi = cv.best;
  while (lo > 0 && cv.points[lo - 1].ok() && cv.points[lo - 1].loss <= best * (1 + tolerance))
    --lo;
  while (hi + 1 < static_cast<int>(cv.points.size()) && cv.points[hi + 1].ok() &&
         cv.points[hi + 1].loss <= best * (1 + tolerance))
    ++hi;
  cv.flat_lo = cv.points[lo].lr;
  cv.flat_hi = cv.points[hi].lr;
  // The parabola through the best and its direct neighbours on the grid, both ok.
  if (cv.best == 0 || cv.best + 1 >= static_cast<int>(cv.points.size())) return;
  const LrPoint &l = cv.points[cv.best - 1], &r = cv.points[cv.best + 1];
  if (!l.ok() || !r.ok()) return;
  double a, b, c;
  if (!parabola({std::log(l.lr), std::log(cv.points[cv.best].lr), std::log(r.lr)},
                {l.loss, best, r.loss}, a, b, c) ||
      !(a > 0))
    return;
  const double x = -b / (2 * a);
  cv.bracketed = true;
  cv.fit_lr = std::exp(x);
  cv.fit_loss = (a * x + b) * x + c;
}

// Least squares of ln y = ln c - e ln x.
void power_fit(const std::vector<double>& x, const std::vector<double>& y, double& c, double& e) {
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += std::log(x[i]) / n, my += std::log(y[i]) / n;
  double sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxx += (std::log(x[i]) - mx) * (std::log(x[i]) - mx);
    sxy += (std::log(x[i]) - mx) * (std::log(y[i]) - my);
  }
  if (!(sxx > 0)) return;
  e = -sxy / sxx;
  c = std::exp(my + e * mx);
}

LrRuleFit fit_rule(const std::string& over, const std::vector<const LrCurve*>& curves,
                   double rule_exponent) {
  LrRuleFit f;
  f.over = over;
  std::vector<double> n, cc, lr;
  std::set<int64_t> sizes;
  for (const LrCurve* cv : curves)
    if (cv->bracketed) {
      n.push_back(static_cast<double>(cv->params_non_embedding));
      cc.push_back(6.0 * static_cast<double>(cv->params_non_embedding) * cv->tokens);
      lr.push_back(cv->fit_lr);
      sizes.insert(cv->params_non_embedding);
    }
  f.optima = static_cast<int>(lr.size());
  f.sizes = static_cast<int>(sizes.size());
  if (f.sizes >= 2) {
    power_fit(n, lr, f.c_n, f.e_n);
    power_fit(cc, lr, f.c_c, f.e_c);
  }
  if (std::isfinite(rule_exponent) && !lr.empty()) {
    double mean = 0;  // of ln(lr C^e): the coefficient's log, least squares at that e
    for (size_t i = 0; i < lr.size(); ++i)
      mean += (std::log(lr[i]) + rule_exponent * std::log(cc[i])) / static_cast<double>(lr.size());
    f.c_fixed = std::exp(mean);
  }
  return f;
}

std::string tied_label(int tied) {
  return tied == 1 ? "tied" : tied == 0 ? "untied" : "embeddings ?";
}

json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

}  // namespace

bool LrCurve::rule_in_flat() const {
  return std::isfinite(rule_lr) && std::isfinite(flat_lo) && rule_lr >= flat_lo * (1 - 1e-9) &&
         rule_lr <= flat_hi * (1 + 1e-9);
}

std::string LrCurve::label() const {
  return attention_label(attention) + ", " + tied_label(tied) + ", warm-up " +
         (std::isfinite(warmup_fraction) ? fmt("%g", warmup_fraction) : std::string("?"));
}

int LrSearch::count(const std::string& state) const {
  int n = 0;
  for (const LrCurve& cv : curves)
    for (const LrPoint& p : cv.points) n += p.state == state;
  return n;
}

double warmup_fraction_of(int64_t warmup_steps, int64_t steps) {
  if (steps <= 0 || warmup_steps < 0) return kNaN;
  if (warmup_steps == 0) return 0.0;
  const double raw = static_cast<double>(warmup_steps) / static_cast<double>(steps);
  for (int digits = 1; digits <= 6; ++digits) {
    const double scale = std::pow(10.0, digits - 1 - std::floor(std::log10(raw)));
    double found = kNaN;
    for (int d = -1; d <= 1; ++d) {
      const double f = (std::round(raw * scale) + d) / scale;
      const bool fits = f > 0 && std::llround(f * static_cast<double>(steps)) == warmup_steps;
      if (fits && (!std::isfinite(found) || std::fabs(f - raw) < std::fabs(found - raw)))
        found = f;
    }
    if (std::isfinite(found)) return found;
  }
  return raw;
}

// plan.json beside the runs or one folder up (a results folder keeps it beside runs/), as the
// report's planned-time section finds it.
std::map<int64_t, double> read_rule_lrs(const fs::path& runs_dir) {
  std::map<int64_t, double> out;
  const json j = read_plan_json(find_plan_json(runs_dir));
  if (!j.is_object() || !j.contains("runs") || !j["runs"].is_array()) return out;
  for (const json& r : j["runs"])
    if (r.is_object() && r.contains("layers") && r.contains("lr_rule") &&
        r["layers"].is_number_integer() && r["lr_rule"].is_number())
      out[r["layers"].get<int64_t>()] = r["lr_rule"].get<double>();
  return out;
}

double read_rule_exponent(const fs::path& runs_dir) {
  const json j = read_plan_json(find_plan_json(runs_dir));
  if (!j.is_object() || !j.contains("lr_rule") || !j["lr_rule"].is_object()) return kNaN;
  const json& e = j["lr_rule"].value("exponent", json());
  return e.is_number() ? e.get<double>() : kNaN;
}

LrSearch analyze_lr_search(const std::vector<Run>& runs, const std::map<int64_t, double>& rule_lrs,
                           double tolerance, double rule_exponent) {
  LrSearch s;
  s.tolerance = tolerance;
  s.rule_exponent = rule_exponent;
  using Key = std::tuple<int64_t, int64_t, std::string, int, std::string>;  // size, ..., warm-up
  std::map<Key, LrCurve> by_key;
  int without_lr = 0;
  for (const Run& r : runs) {
    if (!std::isfinite(r.info.lr) || r.info.lr <= 0) {
      ++without_lr;
      continue;
    }
    const double wu = warmup_fraction_for(r.info);
    // Tied (1) sorts before untied (0); the warm-up by its value, as text for an exact key.
    const Key key{r.info.params_non_embedding, r.info.layers, r.info.attention,
                  -r.info.tied_embeddings, fmt("%020.12f", std::isfinite(wu) ? wu : -1.0)};
    LrCurve& cv = by_key[key];
    cv.layers = r.info.layers;
    cv.width = r.info.width;
    cv.params_non_embedding = r.info.params_non_embedding;
    cv.tokens = r.info.tokens_planned;
    cv.attention = r.info.attention;
    cv.tied = r.info.tied_embeddings;
    cv.warmup_fraction = wu;
    cv.points.push_back(point_of(r));
  }
  MOBA_CHECK(!by_key.empty(), "none of the ", runs.size(),
             " runs records its learning rate (run.json \"config\".train.lr): not a "
             "learning-rate search written by moba train");
  if (without_lr > 0)
    s.notes.push_back(std::to_string(without_lr) +
                      " run(s) without a learning rate in run.json were left out");
  for (auto& [key, cv] : by_key) {
    std::sort(cv.points.begin(), cv.points.end(),
              [](const LrPoint& a, const LrPoint& b) { return a.lr < b.lr; });
    for (size_t i = 1; i < cv.points.size(); ++i)
      if (cv.points[i].lr == cv.points[i - 1].lr)
        s.notes.push_back(cv.points[i - 1].run + " and " + cv.points[i].run +
                          " have the same learning rate, size and grid values");
    if (auto it = rule_lrs.find(cv.layers); it != rule_lrs.end()) cv.rule_lr = it->second;
    fit_curve(cv, tolerance);
    if (cv.best >= 0 && !cv.bracketed)
      s.notes.push_back("L" + std::to_string(cv.layers) + " " + cv.label() +
                        ": the best learning rate " + fmt("%.3g", cv.points[cv.best].lr) +
                        (cv.best == 0 || cv.best + 1 == static_cast<int>(cv.points.size())
                             ? " is at the edge of the grid; extend the grid past it"
                             : " has a neighbour that did not finish well; no parabola"));
    if (cv.best < 0)
      s.notes.push_back("L" + std::to_string(cv.layers) + " " + cv.label() +
                        ": no run finished well");
    s.curves.push_back(cv);
  }
  // The rule over every curve, then per line (a curve's label across sizes).
  std::vector<const LrCurve*> all;
  std::map<std::string, std::vector<const LrCurve*>> lines;
  std::vector<std::string> order;
  for (const LrCurve& cv : s.curves) {
    all.push_back(&cv);
    if (!lines.count(cv.label())) order.push_back(cv.label());
    lines[cv.label()].push_back(&cv);
  }
  s.rules.push_back(fit_rule("every curve", all, rule_exponent));
  for (const std::string& l : order)
    if (lines.size() > 1) s.rules.push_back(fit_rule(l, lines[l], rule_exponent));
  return s;
}

std::string lr_search_markdown(const LrSearch& s) {
  std::ostringstream os;
  int total = 0;
  for (const LrCurve& cv : s.curves) total += static_cast<int>(cv.points.size());
  os << "# Learning-rate search: " << s.runs_dir.string() << "\n\n"
     << total << " runs in " << s.curves.size() << " curves (size x attention x embeddings x "
     << "warm-up): " << s.count("ok") << " finished, " << s.count("diverged") << " diverged, "
     << s.count("failed") << " failed, " << s.count("running") << " unfinished"
     << (s.count("no validation") ? ", " + std::to_string(s.count("no validation")) +
                                        " without a validation"
                                  : std::string())
     << ". Loss: the last validation loss of each run (nats/token). Diverged: the final loss "
        "is not finite or above the initial loss; failed: the run stopped with an error (the "
        "trainer stops at a non-finite loss).\n\n";
  os << "## Curves\n\nFitted: the vertex of a parabola in ln(lr) through the best run and its "
        "two neighbours on the grid. Flat range: the learning rates next to the best whose "
        "final loss is within "
     << fmt("%g", 100 * s.tolerance)
     << "% of the best. Rule: the sweep's [lr] rule at that size (plan.json), and whether it "
        "lies in the flat range.\n\n"
     << "| size | N (non-emb) | curve | runs | best lr | best loss | fitted lr | fitted loss | "
        "flat range | rule lr | on the flat part |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const LrCurve& cv : s.curves) {
    const bool b = cv.best >= 0;
    os << "| L" << cv.layers << " | " << si(static_cast<double>(cv.params_non_embedding))
       << " | " << cv.label() << " | " << cv.points.size() << " | "
       << (b ? fmt("%.3g", cv.points[cv.best].lr) : "-") << " | "
       << (b ? fmt("%.4f", cv.points[cv.best].loss) : "-") << " | "
       << (cv.bracketed ? fmt("%.3g", cv.fit_lr) : "not bracketed") << " | "
       << (cv.bracketed ? fmt("%.4f", cv.fit_loss) : "-") << " | "
       << (b ? fmt("%.3g", cv.flat_lo) + " - " + fmt("%.3g", cv.flat_hi) : "-") << " | "
       << (std::isfinite(cv.rule_lr) ? fmt("%.3g", cv.rule_lr) : "-") << " | "
       << (!std::isfinite(cv.rule_lr) ? "-" : cv.rule_in_flat() ? "yes" : "**no**") << " |\n";
  }
  os << "\n## The learning-rate rule across sizes\n\n"
        "lr_opt = c x N^-e (N: non-embedding parameters), least squares in log space over the "
        "curves' fitted optima, and the same in C = 6ND, the form of the sweep's [lr] rule "
        "(lr.coefficient = c, lr.exponent = e). With two sizes the exponent passes exactly "
        "through them: it carries no error estimate. The last column keeps the sweep's own "
        "exponent"
     << (std::isfinite(s.rule_exponent) ? " (" + fmt("%g", s.rule_exponent) + ")" : std::string())
     << " and fits only the coefficient, the rule to use when the sizes are too few or too "
        "close to pin the exponent down.\n\n"
     << "| over | optima | sizes | c (N) | e (N) | c (C = 6ND) | e (C) | c at the sweep's e |\n"
     << "|---|---|---|---|---|---|---|---|\n";
  for (const LrRuleFit& f : s.rules) {
    const bool ok = std::isfinite(f.e_n);
    os << "| " << f.over << " | " << f.optima << " | " << f.sizes << " | "
       << (ok ? fmt("%.4g", f.c_n) : "-") << " | " << (ok ? fmt("%.3f", f.e_n) : "-") << " | "
       << (ok ? fmt("%.4g", f.c_c) : "-") << " | " << (ok ? fmt("%.3f", f.e_c) : "-") << " | "
       << (std::isfinite(f.c_fixed) ? fmt("%.4g", f.c_fixed) : "-") << " |\n";
  }
  os << "\n## Runs\n\n| run | size | curve | lr | final loss | state |\n"
     << "|---|---|---|---|---|---|\n";
  for (const LrCurve& cv : s.curves)
    for (size_t i = 0; i < cv.points.size(); ++i) {
      const LrPoint& p = cv.points[i];
      os << "| " << p.run << " | L" << cv.layers << " | " << cv.label() << " | "
         << fmt("%.3g", p.lr) << " | "
         << (std::isfinite(p.loss) ? fmt("%.4f", p.loss) : std::string("-")) << " | "
         << p.state << (static_cast<int>(i) == cv.best ? " (best)" : "") << " |\n";
    }
  if (s.plan_times) os << "\n" << plan_times_markdown(*s.plan_times);
  if (!s.notes.empty()) {
    os << "\n## Notes\n\n";
    for (const std::string& n : s.notes) os << "- " << n << "\n";
  }
  return os.str();
}

json lr_search_json(const LrSearch& s) {
  json curves = json::array();
  for (const LrCurve& cv : s.curves) {
    json pts = json::array();
    for (const LrPoint& p : cv.points)
      pts.push_back({{"run", p.run}, {"lr", p.lr}, {"loss", num(p.loss)}, {"state", p.state}});
    const bool b = cv.best >= 0;
    curves.push_back({{"layers", cv.layers},
                      {"width", cv.width},
                      {"params_non_embedding", cv.params_non_embedding},
                      {"tokens", cv.tokens},
                      {"attention", cv.attention},
                      {"tied_embeddings", cv.tied < 0 ? json(nullptr) : json(cv.tied == 1)},
                      {"warmup_fraction", num(cv.warmup_fraction)},
                      {"best_lr", b ? json(cv.points[cv.best].lr) : json(nullptr)},
                      {"best_loss", b ? num(cv.points[cv.best].loss) : json(nullptr)},
                      {"bracketed", cv.bracketed},
                      {"fit_lr", num(cv.fit_lr)},
                      {"fit_loss", num(cv.fit_loss)},
                      {"flat_lr", {num(cv.flat_lo), num(cv.flat_hi)}},
                      {"rule_lr", num(cv.rule_lr)},
                      {"rule_in_flat", std::isfinite(cv.rule_lr) ? json(cv.rule_in_flat())
                                                                 : json(nullptr)},
                      {"points", pts}});
  }
  json rules = json::array();
  for (const LrRuleFit& f : s.rules)
    rules.push_back({{"over", f.over},
                     {"optima", f.optima},
                     {"sizes", f.sizes},
                     {"n", {{"coefficient", num(f.c_n)}, {"exponent", num(f.e_n)}}},
                     {"c_6nd", {{"coefficient", num(f.c_c)}, {"exponent", num(f.e_c)}}},
                     {"c_6nd_at_sweep_exponent",
                      {{"coefficient", num(f.c_fixed)}, {"exponent", num(s.rule_exponent)}}}});
  return {{"runs_dir", s.runs_dir.string()},
          {"tolerance", s.tolerance},
          {"counts",
           {{"ok", s.count("ok")},
            {"diverged", s.count("diverged")},
            {"failed", s.count("failed")},
            {"running", s.count("running")},
            {"no_validation", s.count("no validation")}}},
          {"curves", curves},
          {"rules", rules},
          {"notes", s.notes}};
}

std::vector<fs::path> write_lr_search(const fs::path& runs_dir, const fs::path& out_dir,
                                      double tolerance, double png_scale) {
  const std::vector<Run> runs = read_runs(runs_dir);
  LrSearch s = analyze_lr_search(runs, read_rule_lrs(runs_dir), tolerance,
                                 read_rule_exponent(runs_dir));
  s.runs_dir = runs_dir;
  s.plan_times = plan_times(runs, runs_dir);
  fs::create_directories(out_dir);
  std::vector<fs::path> out;
  const auto write = [&](const fs::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
    MOBA_CHECK(f.good(), "cannot write '", p.string(), "'");
    out.push_back(p);
  };
  write(out_dir / "lr_search.md", lr_search_markdown(s));
  write(out_dir / "lr_search.json", lr_search_json(s).dump(2) + "\n");
  if (plotting_available())
    for (const fs::path& p : write_lr_figure(s, out_dir, png_scale)) out.push_back(p);
  return out;
}

}  // namespace moba::scaling
