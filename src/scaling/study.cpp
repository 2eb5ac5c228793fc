#include "scaling/study.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "core/error.h"
#include "scaling/seeds.h"

namespace moba::scaling {

const FitResult* Study::find(const Metric& m, const std::string& attention, Compute c) const {
  for (const FitResult& f : fits)
    if (f.metric == m && f.attention == attention && f.compute == c) return &f;
  return nullptr;
}

std::string run_flag(const Run& r) { return r.info.status == "finished" ? "" : r.info.status; }

Study run_study(std::vector<Run> runs, const StudyOptions& o) {
  MOBA_CHECK(o.bootstrap >= 0, "--bootstrap must be >= 0, got ", o.bootstrap);
  MOBA_CHECK(!o.computes.empty(), "no compute convention chosen");
  Study s;
  s.options = o;
  for (Run& r : runs) {
    for (const std::string& w : r.warnings) s.notes.push_back("warning: " + w);
    if (r.running())
      s.notes.push_back("run '" + r.info.name + "' is still running: its points so far are used");
    if (r.failed() && !o.include_failed) {
      s.notes.push_back("run '" + r.info.name + "' failed: left out (--include-failed keeps it)");
      continue;
    }
    s.runs.push_back(std::move(r));
  }
  MOBA_CHECK(!s.runs.empty(), "no runs left to fit (every run failed)");
  s.bucket_size = common_bucket_size(s.runs);

  const std::vector<Metric> present = metrics_present(s.runs);
  std::vector<Metric> metrics = o.metrics.empty() ? present : o.metrics;
  std::string available;
  for (const Metric& m : present) available += (available.empty() ? "" : ", ") + m.id();
  for (const Metric& m : metrics)
    MOBA_CHECK(std::find(present.begin(), present.end(), m) != present.end(), "metric '", m.id(),
               "' is not in any run's validation points; they carry: ", available);

  // One run per (size, attention) in the fits: of seed replicas, the lowest seed (seeds.h).
  s.in_fits = fit_runs(s.runs);
  {
    std::string replicas;
    size_t n = 0;
    for (size_t i = 0; i < s.runs.size(); ++i)
      if (!s.in_fits[i]) replicas += (n++ ? ", " : "") + s.runs[i].info.name;
    if (n > 0)
      s.notes.push_back(std::to_string(n) + " seed replica" + (n == 1 ? "" : "s") +
                        " left out of the fits (one run per size and attention type, the "
                        "lowest seed): " + replicas);
  }

  for (const char* a : {"moba", "full", "hybrid"})
    if (std::any_of(s.runs.begin(), s.runs.end(), [&](const Run& r) { return r.info.attention == a; }))
      s.attentions.push_back(a);

  // Rising frontiers: one note for all of them (the worst named), not one per fit.
  std::string worst_rise_note;
  double worst_rise_all = 0;
  int rising = 0, fits = 0;
  for (const Metric& m : metrics)
    for (Compute c : o.computes)
      for (const std::string& a : s.attentions) {
        ++fits;
        FitResult f;
        f.metric = m;
        f.attention = a;
        f.compute = c;
        for (size_t i = 0; i < s.runs.size(); ++i) {
          if (s.runs[i].info.attention != a || !s.in_fits[i]) continue;
          Curve cv = make_curve(s.runs[i], static_cast<int>(i), m, c);
          if (!cv.empty()) f.curves.push_back(std::move(cv));
        }
        f.frontier = lower_envelope(f.curves, o.points_per_decade);
        f.fit_c_min = fit_start(f.curves, o.fit_from);
        // A frontier that rises means a run ended while the next size was still early in
        // its training: sizes too far apart or token budgets too small for a clean fit.
        double best = INFINITY, worst_rise = 0, rise_c = 0;
        for (const FrontierPoint& p : f.frontier) {
          const bool fitted = p.c >= f.fit_c_min * (1 - 1e-9);
          if (fitted && p.loss / best - 1 > worst_rise) worst_rise = p.loss / best - 1, rise_c = p.c;
          best = std::min(best, p.loss);
        }
        if (worst_rise > 0.02) {
          ++rising;
          if (worst_rise > worst_rise_all) {
            char buf[256];
            std::snprintf(buf, sizeof buf,
                          "frontier of %s (%s, %s) rises by %.0f%% at C = %.3g PFLOP/s-days",
                          m.label(s.bucket_size).c_str(), attention_label(a).c_str(),
                          compute_id(c).c_str(), 100 * worst_rise, rise_c);
            worst_rise_note = buf;
            worst_rise_all = worst_rise;
          }
        }
        try {
          f.fit = fit_frontier(f.frontier, o.irreducible, f.fit_c_min);
        } catch (const Error& e) {
          f.why_no_fit = e.what();
          s.notes.push_back("no fit for " + m.label(s.bucket_size) + " (" + attention_label(a) +
                            ", " + compute_id(c) + "): " + e.what());
        }
        if (f.fit && o.bootstrap > 0)
          f.bootstrap = bootstrap_over_runs(f.curves, o.irreducible, o.bootstrap, o.seed,
                                            o.points_per_decade, o.fit_from);
        s.fits.push_back(std::move(f));
      }
  if (rising == 1)
    s.notes.push_back(worst_rise_note + ": a run ended while the next size was early in training");
  else if (rising > 1)
    s.notes.push_back("the frontier rises by more than 2% in " + std::to_string(rising) + " of " +
                      std::to_string(fits) + " fits (the most: " + worst_rise_note +
                      "): runs ended while the next size was early in training");
  return s;
}

std::string formula(const std::string& metric_label, const std::string& attention,
                    const PowerLaw& law, bool irreducible) {
  char buf[128];
  if (irreducible)
    std::snprintf(buf, sizeof buf, "%.3f + %.3f x C^%.3f", law.E, law.A, -law.alpha);
  else
    std::snprintf(buf, sizeof buf, "%.3f x C^%.3f", law.A, -law.alpha);
  return metric_label + " (" + attention_label(attention) + ") = " + buf;
}

std::string formula(const Study& s, const FitResult& f) {
  return f.fit ? formula(s.label(f.metric), f.attention, f.fit->law, f.fit->irreducible)
               : s.label(f.metric) + " (" + attention_label(f.attention) + "): no fit";
}

namespace {
nlohmann::json interval_json(const Interval& i) { return {i.lo, i.hi}; }
}  // namespace

nlohmann::json to_json(const Study& s) {
  using nlohmann::json;
  json runs = json::array();
  for (size_t i = 0; i < s.runs.size(); ++i) {
    const Run& r = s.runs[i];
    const ValPoint* last = r.last_val();
    runs.push_back({{"name", r.info.name},
                    {"dir", r.dir.string()},
                    {"attention", r.info.attention},
                    {"status", r.info.status},
                    {"flagged", r.info.status != "finished"},
                    {"params_non_embedding", r.info.params_non_embedding},
                    {"tokens_planned", r.info.tokens_planned},
                    {"val_points", r.val.size()},
                    {"seed", r.info.seed >= 0 ? json(r.info.seed) : json()},
                    {"in_fits", i >= s.in_fits.size() || s.in_fits[i]},
                    {"final_loss", last && std::isfinite(last->loss) ? json(last->loss) : json()}});
  }
  json fits = json::array();
  for (const FitResult& f : s.fits) {
    json j = {{"metric", f.metric.id()},
              {"metric_label", s.label(f.metric)},
              {"attention", f.attention},
              {"compute", compute_id(f.compute)},
              {"compute_unit", "PFLOP/s-days"},
              {"runs", f.curves.size()},
              {"fit_from_C", f.fit_c_min}};
    json frontier = json::array();
    for (const FrontierPoint& p : f.frontier)
      frontier.push_back({{"C", p.c},
                          {"loss", p.loss},
                          {"run", s.runs[static_cast<size_t>(p.run)].info.name},
                          {"fitted", p.c >= f.fit_c_min * (1 - 1e-9)}});
    if (f.fit) {
      j["form"] = f.fit->irreducible ? "E + A*C^-alpha" : "A*C^-alpha";
      j["A"] = f.fit->law.A;
      j["alpha"] = f.fit->law.alpha;
      if (f.fit->irreducible) j["E"] = f.fit->law.E;
      j["formula"] = formula(s, f);
      j["points"] = f.fit->points;
      j["rms_log_residual"] = f.fit->rms_log_residual;
      j["converged"] = f.fit->converged;
    } else {
      j["formula"] = nullptr;
      j["why_no_fit"] = f.why_no_fit;
    }
    if (f.bootstrap) {
      json b = {{"replicas", f.bootstrap->replicas},
                {"replicas_ok", f.bootstrap->replicas_ok},
                {"level", 0.95}};
      if (f.bootstrap->replicas_ok > 0) {
        b["A"] = interval_json(f.bootstrap->A);
        b["alpha"] = interval_json(f.bootstrap->alpha);
        if (f.fit && f.fit->irreducible) b["E"] = interval_json(f.bootstrap->E);
      }
      j["bootstrap"] = b;
    }
    j["frontier"] = frontier;
    fits.push_back(j);
  }
  json metrics = json::array();
  std::set<std::string> seen;
  for (const FitResult& f : s.fits)
    if (seen.insert(f.metric.id()).second) metrics.push_back(f.metric.id());
  return {{"runs", runs},
          {"bucket_size", s.bucket_size},
          {"metrics", metrics},
          {"options",
           {{"irreducible", s.options.irreducible},
            {"bootstrap", s.options.bootstrap},
            {"seed", s.options.seed},
            {"points_per_decade", s.options.points_per_decade},
            {"fit_from", fit_from_id(s.options.fit_from)},
            {"include_failed", s.options.include_failed}}},
          {"notes", s.notes},
          {"fits", fits}};
}

}  // namespace moba::scaling
