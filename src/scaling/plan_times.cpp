#include "scaling/plan_times.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "scaling/report.h"

namespace moba::scaling {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// x with `decimals` decimals ("-" when not finite), with its sign when `sign`.
std::string fixed(double x, int decimals, bool sign = false) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream os;
  os << std::fixed << std::setprecision(decimals) << (sign ? std::showpos : std::noshowpos) << x;
  return os.str();
}

// The train line of `step`, or nullptr (lines ascend by step).
const TrainPoint* train_at(const Run& r, int64_t step) {
  const auto it = std::lower_bound(r.train.begin(), r.train.end(), step,
                                   [](const TrainPoint& p, int64_t s) { return p.step < s; });
  return it != r.train.end() && it->step == step ? &*it : nullptr;
}

}  // namespace

double measured_seconds(const Run& r, int64_t steps, std::string* why) {
  const auto none = [&](const std::string& reason) {
    if (why) *why = reason;
    return kNaN;
  };
  if (r.failed()) return none("failed");
  if (steps <= 0) steps = r.info.steps;
  const int64_t last_step = r.train.empty() ? 0 : r.train.back().step;
  if (r.running() || (steps > 0 && last_step < steps))
    return none("unfinished (step " + std::to_string(last_step) +
                (steps > 0 ? " of " + std::to_string(steps) : std::string()) + ")");
  if (r.train.empty() || !(r.train.back().elapsed_s > 0)) return none("no elapsed time recorded");
  double t = r.train.back().elapsed_s;
  const ValPoint* v = r.last_val();
  if (v && v->step == last_step) {
    // A validated step's next line comes after its validation (and checkpoint): that gap
    // less an ordinary step (the median gap) is the pause.
    std::vector<double> step_s;
    for (size_t i = 0; i + 1 < r.train.size(); ++i) {
      const TrainPoint &a = r.train[i], &b = r.train[i + 1];
      if (b.step == a.step + 1) step_s.push_back(b.elapsed_s - a.elapsed_s);
    }
    double pauses = 0;
    int n = 0;
    if (!step_s.empty()) {
      std::nth_element(step_s.begin(), step_s.begin() + step_s.size() / 2, step_s.end());
      const double median = step_s[step_s.size() / 2];
      for (const ValPoint& e : r.val) {
        const TrainPoint *a = train_at(r, e.step), *b = train_at(r, e.step + 1);
        if (e.step >= last_step || !a || !b) continue;
        pauses += std::max(0.0, b->elapsed_s - a->elapsed_s - median);
        ++n;
      }
    }
    if (n > 0) t += pauses / n;
  }
  if (why) why->clear();
  return t;
}

int PlanTimes::compared() const {
  return static_cast<int>(std::count_if(rows.begin(), rows.end(),
                                        [](const PlanTimeRow& r) { return r.compared(); }));
}

double PlanTimes::max_abs_error() const {
  double m = kNaN;
  for (const PlanTimeRow& r : rows)
    if (r.compared() && !(std::fabs(r.error()) <= m)) m = std::fabs(r.error());
  return m;
}

bool PlanTimes::within_bar() const {
  return std::all_of(rows.begin(), rows.end(), [&](const PlanTimeRow& r) {
    return !r.compared() || std::fabs(r.error()) <= bar;
  });
}

std::string PlanTimes::summary() const {
  if (!problem.empty()) return "Planned against measured time: " + problem + ".";
  const int n = compared(), missing = static_cast<int>(rows.size()) - n;
  if (n == 0)
    return "Planned against measured time: no run of the plan (" + std::to_string(rows.size()) +
           ") has both an estimate and a measured time.";
  std::string worst;
  for (const PlanTimeRow& r : rows)
    if (r.compared() && std::fabs(r.error()) == max_abs_error()) worst = r.run;
  return "Planned against measured time: " + std::to_string(n) + " of " +
         std::to_string(rows.size()) + " runs compared, max |error| " +
         fixed(100 * max_abs_error(), 1) + "% (" + md_cell(worst) + "); every compared run within " +
         std::to_string(std::lround(100 * bar)) + "%: " + (within_bar() ? "yes" : "**no**") +
         (missing > 0 ? " (" + std::to_string(missing) + " not compared)" : "") + ".";
}

json read_plan_json(const fs::path& path) {
  if (!fs::is_regular_file(path)) return json(json::value_t::discarded);
  std::ifstream f(path);
  return json::parse(f, nullptr, /*allow_exceptions=*/false);
}

fs::path find_plan_json(const fs::path& runs_dir) {
  fs::path dir = fs::absolute(runs_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "runs/"
  for (const fs::path& d : {dir, dir.parent_path()})
    if (fs::is_regular_file(d / "plan.json"))
      return (d / "plan.json").lexically_proximate(fs::current_path());  // as the user would type it
  return {};
}

std::optional<PlanTimes> plan_times(const std::vector<Run>& runs, const fs::path& runs_dir) {
  const fs::path p = find_plan_json(runs_dir);
  if (p.empty()) return std::nullopt;
  PlanTimes t;
  t.plan = p;
  const json j = read_plan_json(p);
  if (!j.is_object() || !j.contains("runs") || !j["runs"].is_array()) {
    t.problem = p.string() + " is not a plan (`moba sweep` writes one with a \"runs\" array)";
    return t;
  }
  if (j.contains("device") && j["device"].is_string()) t.device = j["device"].get<std::string>();
  std::map<std::string, const Run*> by_name;
  for (const Run& r : runs) by_name[r.info.name] = &r;
  int named = 0;
  for (const json& pr : j["runs"]) {
    if (!pr.is_object() || !pr.contains("name") || !pr["name"].is_string()) continue;
    PlanTimeRow row;
    row.run = pr["name"].get<std::string>();
    const json est = pr.value("seconds_estimated", json());
    if (est.is_number()) row.planned = est.get<double>();
    const json parts = pr.value("seconds_estimated_parts", json());
    if (parts.is_object()) {
      const auto part = [&](const char* k) {
        return parts.contains(k) && parts[k].is_number() ? parts[k].get<double>() : kNaN;
      };
      row.planned_per_token = part("per_token");
      row.planned_matmul = part("matmul");
      row.planned_full_attention = part("full_attention");
      row.planned_moba_attention = part("moba_attention");
    }
    const json steps = pr.value("steps", json());
    const auto it = by_name.find(row.run);
    if (it == by_name.end()) {
      row.state = "no run folder";
    } else {
      ++named;
      row.measured = measured_seconds(*it->second, steps.is_number_integer() ? steps.get<int64_t>() : 0,
                                      &row.state);
      if (row.state.empty() && !(row.planned > 0)) row.state = "no estimate in the plan";
    }
    t.rows.push_back(row);
  }
  t.not_in_plan = static_cast<int>(by_name.size()) - named;
  return t;
}

std::string plan_times_markdown(const PlanTimes& t) {
  std::ostringstream md;
  md << "## Planned against measured time\n\n";
  if (!t.problem.empty()) {
    md << t.summary() << "\n";
    return md.str();
  }
  md << "Planned: `" << md_cell(t.plan.string()) << "`'s estimate per run"
     << (t.device.empty() ? "" : " (device " + md_cell(t.device) + ")")
     << ", the preset's [estimate] time model over the training tokens and every validation, "
        "without the process's start-up. Measured: the run's own clock over the same span, "
        "from the start of its training loop (model, data and validation windows already set "
        "up) to the end of its last step (metrics.jsonl's last elapsed_s, with every "
        "validation and checkpoint before it), plus the final validation and checkpoint, "
        "untimed in metrics.jsonl and taken as the mean of the run's earlier pauses for "
        "them. Error: (planned - measured) / measured, positive when the plan overestimates; "
        "issue 13's bar is "
     << std::to_string(std::lround(100 * t.bar)) << "%.\n\n";
  // The planned time's parts, when the plan has them (plans since the split time model).
  const bool parts = std::any_of(t.rows.begin(), t.rows.end(),
                                 [](const PlanTimeRow& r) { return r.has_parts(); });
  if (parts)
    md << "Planned, by part of the time model: per-token time, matmuls, full attention, MoBA "
          "attention (seconds; they add up to the planned time).\n\n"
       << "| run | planned (s) | per token | matmuls | full attn. | MoBA attn. | measured (s) | "
          "error |\n|---|---|---|---|---|---|---|---|\n";
  else
    md << "| run | planned (s) | measured (s) | error |\n|---|---|---|---|\n";
  for (const PlanTimeRow& r : t.rows) {
    md << "| " << md_cell(r.run) << " | " << fixed(r.planned, 1) << " | ";
    if (parts)
      md << fixed(r.planned_per_token, 1) << " | " << fixed(r.planned_matmul, 1) << " | "
         << fixed(r.planned_full_attention, 1) << " | " << fixed(r.planned_moba_attention, 1)
         << " | ";
    md << fixed(r.measured, 1) << " | ";
    if (!r.compared()) md << md_cell(r.state);
    else
      md << fixed(100 * r.error(), 1, true) << "%"
         << (std::fabs(r.error()) > t.bar ? " (over " + std::to_string(std::lround(100 * t.bar)) + "%)" : "");
    md << " |\n";
  }
  if (t.not_in_plan > 0)
    md << "\n" << t.not_in_plan << " run folder" << (t.not_in_plan > 1 ? "s are" : " is")
       << " not in the plan and left out.\n";
  md << "\n" << t.summary() << "\n";
  return md.str();
}

json plan_times_json(const PlanTimes& t) {
  const auto num = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
  json rows = json::array();
  for (const PlanTimeRow& r : t.rows) {
    json row = {{"run", r.run},
                {"planned_s", num(r.planned)},
                {"measured_s", num(r.measured)},
                {"error", r.compared() ? num(r.error()) : json(nullptr)},
                {"state", r.state}};
    if (r.has_parts())
      row["planned_parts_s"] = {{"per_token", num(r.planned_per_token)},
                                {"matmul", num(r.planned_matmul)},
                                {"full_attention", num(r.planned_full_attention)},
                                {"moba_attention", num(r.planned_moba_attention)}};
    rows.push_back(std::move(row));
  }
  return {{"plan", t.plan.string()},
          {"device", t.device},
          {"bar", t.bar},
          {"problem", t.problem},
          {"compared", t.compared()},
          {"max_abs_error", num(t.max_abs_error())},
          {"runs", rows}};
}

}  // namespace moba::scaling
