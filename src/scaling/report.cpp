#include "scaling/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "core/build_info.h"
#include "core/error.h"
#include "scaling/paired.h"
#include "scaling/plot.h"
#include "scaling/seeds.h"

namespace moba::scaling {
namespace {

namespace fs = std::filesystem;

std::string num(double x, int decimals = 3) {
  if (!std::isfinite(x)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, x);
  return buf;
}

// 3.1M, 25.2M, 1.1B, 520K.
std::string sci(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", x);
  return b;
}

std::string si(double x) {
  char buf[64];
  if (x >= 1e9) std::snprintf(buf, sizeof buf, "%.2fB", x / 1e9);
  else if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.1fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

double bits_per_byte(double nats_per_token, double bytes_per_token) {
  return nats_per_token / std::log(2.0) / bytes_per_token;
}

std::string interval(const std::optional<Bootstrap>& b, Interval Bootstrap::*which) {
  if (!b || b->replicas_ok == 0) return "";
  const Interval& i = (*b).*which;
  return " [" + num(i.lo) + ", " + num(i.hi) + "]";
}

using SizeKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
SizeKey size_key(const Run& r) {
  return {r.info.params_non_embedding, r.info.layers, r.info.heads, r.info.width, r.info.seq_len};
}

std::string size_label(const Run& r) {
  return std::to_string(r.info.layers) + "L x " + std::to_string(r.info.heads) + "H x " +
         std::to_string(r.info.width) + " (" + si(static_cast<double>(r.info.params_non_embedding)) + ")";
}

}  // namespace

std::string law_sentence(const FitComparison& c) {
  std::ostringstream o;
  const Interval& a = c.alpha_diff_ci;
  o << "LM loss against compute (6ND): MoBA's exponent minus full attention's is "
    << num(c.alpha_diff, 3) << " [" << num(a.lo, 3) << ", " << num(a.hi, 3) << "]: ";
  // An end within half a unit of the third decimal prints as 0.000: say how narrowly.
  const auto excludes = [](double end) {
    return std::fabs(end) < 5e-4 ? " (the interval excludes 0, by less than 0.0005)"
                                 : " (the interval excludes 0)";
  };
  if (a.hi < 0) o << "MoBA's loss falls more slowly with compute" << excludes(a.hi);
  else if (a.lo > 0) o << "MoBA's loss falls faster with compute" << excludes(a.lo);
  else o << "the two exponents do not differ beyond their interval";
  const Interval& r = c.loss_ratio_ci;
  char cbuf[32];
  std::snprintf(cbuf, sizeof cbuf, "%.3g", c.c_star);
  o << ". At the largest compute of the runs (C* = " << cbuf << " PFLOP/s-days) MoBA's loss is "
    << num(c.loss_ratio, 4) << " [" << num(r.lo, 4) << ", " << num(r.hi, 4) << "] of full's ("
    << (r.contains(1.0) ? "the interval includes 1" : c.loss_ratio < 1 ? "lower" : "higher")
    << "; " << c.replicas << " bootstrap replicas over the runs).";
  return o.str();
}

std::string ratio_trend(const PowerLaw& full, const PowerLaw& moba, double c_lo, double c_hi) {
  auto ratio = [&](double c) { return moba(c) / full(c); };
  const double r_lo = ratio(c_lo), r_hi = ratio(c_hi);
  std::ostringstream o;
  o << "Over the fitted range of compute the ratio goes from " << num(r_lo, 4) << " to "
    << num(r_hi, 4) << ": ";
  if ((r_lo - 1) * (r_hi - 1) < 0) {
    double a = std::log(c_lo), b = std::log(c_hi);
    for (int i = 0; i < 100; ++i) {
      const double mid = 0.5 * (a + b);
      if ((ratio(std::exp(a)) < 1) == (ratio(std::exp(mid)) < 1)) a = mid;
      else b = mid;
    }
    char cbuf[32];
    std::snprintf(cbuf, sizeof cbuf, "%.3g", std::exp(0.5 * (a + b)));
    o << "the fits cross at C = " << cbuf << " PFLOP/s-days, MoBA " << (r_lo < 1 ? "lower" : "higher")
      << " below it and " << (r_lo < 1 ? "higher" : "lower") << " above it.";
  } else {
    o << "the gap " << (std::fabs(r_hi - 1) < std::fabs(r_lo - 1) ? "narrows" : "widens")
      << " with compute, MoBA " << (r_hi < 1 ? "lower" : r_hi > 1 ? "higher" : "equal")
      << " throughout.";
  }
  return o.str();
}

std::string md_cell(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '\n': case '\r': out += ' '; break;
      case '|': case '`': case '*': case '_': case '[': case ']': case '\\':
        out += '\\';
        out += ch;
        break;
      default: out += ch;
    }
  }
  return out;
}

std::vector<SizePair> pair_by_size(const std::vector<Run>& runs) {
  std::map<SizeKey, std::pair<std::vector<const Run*>, std::vector<const Run*>>> by;
  for (const Run& r : runs) {
    if (r.info.attention == "full") by[size_key(r)].first.push_back(&r);
    if (r.info.attention == "moba") by[size_key(r)].second.push_back(&r);
  }
  std::vector<SizePair> out;
  for (auto& [key, lists] : by)
    for (const Run* f : lists.first)
      for (const Run* m : lists.second) {
        // Seed replicas pair within their seed (seeds.h): both types of a seed share its
        // batches and windows. Runs whose seed is unknown pair with every run of the size.
        if (f->info.seed >= 0 && m->info.seed >= 0 && f->info.seed != m->info.seed) continue;
        SizePair p{f, m};
        // The largest token count both evaluated with a finite LM loss.
        for (auto it = f->val.rbegin(); it != f->val.rend() && !p.full_point; ++it) {
          if (!std::isfinite(it->loss)) continue;
          for (const ValPoint& q : m->val)
            if (q.tokens == it->tokens && std::isfinite(q.loss)) p.full_point = &*it, p.moba_point = &q;
        }
        if (!p.full_point) {
          p.same_tokens = false;
          p.full_point = f->last_val();
          p.moba_point = m->last_val();
        }
        out.push_back(p);
      }
  return out;
}

std::string report_markdown(const Study& s, const std::string& runs_dir,
                            const std::vector<ReportFigure>& figures,
                            const std::optional<PlanTimes>& plan_times) {
  std::ostringstream md;
  const bool synthetic = std::all_of(s.runs.begin(), s.runs.end(), [](const Run& r) {
    return r.info.name.rfind("synthetic-", 0) == 0;
  });
  md << "# Scaling study: MoBA against full attention\n\n";
  md << "Runs from `" << runs_dir << "` (" << s.runs.size() << " runs), report by `moba report` "
     << version() << ". Definitions (frontier, fits, intervals, compute conventions): "
     << "docs/scaling.md.\n\n";
  if (synthetic)
    md << "> **Synthetic runs.** Every run here was generated from a known scaling law with "
          "noise (src/scaling/synthetic.h), not trained. The numbers show the pipeline, not "
          "MoBA.\n\n";
  {  // What the losses were measured on.
    std::map<std::string, int> sources;
    for (const Run& r : s.runs)
      ++sources[r.info.validation_data.empty() ? "not recorded (runs made before 2026-12)"
                                               : r.info.validation_data];
    md << "Validation data: ";
    int i = 0;
    for (const auto& [what, n] : sources)
      md << (i++ ? "; " : "") << what << (sources.size() > 1 ? " (" + std::to_string(n) + " runs)" : "");
    md << ".\n\n";
  }
  std::vector<std::string> flagged;
  for (const Run& r : s.runs)
    if (!run_flag(r).empty())
      flagged.push_back(md_cell(r.info.name) + " (" + md_cell(run_flag(r)) + ")");
  if (!flagged.empty()) {
    md << "> **Flagged runs**: ";
    for (size_t i = 0; i < flagged.size(); ++i) md << (i ? ", " : "") << flagged[i];
    md << ". Their points so far are used; their final losses are not final.\n\n";
  }

  // Runs.
  md << "## Runs\n\nLosses at each run's last validation point, in nats per token and bits "
        "per byte (nats / ln 2 / bytes_per_token).\n\n";
  md << "| run | attention | layers x heads x width | non-emb. params | tokens seen / planned "
        "| status | LM loss (nats/tok) | LM loss (bits/byte) | trailing loss (nats/tok) | "
        "trailing loss (bits/byte) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Run& r : s.runs) {
    const ValPoint* v = r.last_val();
    md << "| " << md_cell(r.info.name) << " | " << attention_label(r.info.attention) << " | "
       << r.info.layers << " x " << r.info.heads << " x " << r.info.width << " | "
       << si(static_cast<double>(r.info.params_non_embedding)) << " | "
       << (v ? si(v->tokens) : "0") << " / " << si(r.info.tokens_planned) << " | "
       << (run_flag(r).empty() ? "finished" : "**" + md_cell(r.info.status) + "**") << " | "
       << (v ? num(v->loss) : "n/a") << " | "
       << (v ? num(bits_per_byte(v->loss, r.info.bytes_per_token)) : "n/a") << " | "
       << (v ? num(v->trailing_loss) : "n/a") << " | "
       << (v ? num(bits_per_byte(v->trailing_loss, r.info.bytes_per_token)) : "n/a") << " |\n";
  }

  // Fits.
  md << "\n## Fits\n\nL = " << (s.options.irreducible ? "E + " : "") << "A x C^-alpha on "
     << "each attention type's compute-optimal frontier, C in PFLOP/s-days (FLOPs / 8.64e19)";
  if (s.options.bootstrap > 0)
    md << "; in brackets the 95% bootstrap interval over runs (" << s.options.bootstrap
       << " replicas, seed " << s.options.seed << ")";
  md << ".\n";
  // The laws are in nats per token; in bits per byte a law is the same law divided by
  // ln 2 x bytes_per_token (A and E scale, alpha does not), when all runs share it.
  const bool one_bpt = std::all_of(s.runs.begin(), s.runs.end(), [&](const Run& r) {
    return r.info.bytes_per_token == s.runs.front().info.bytes_per_token;
  });
  if (!s.runs.empty()) {
    if (one_bpt) {
      const double k = std::log(2.0) * s.runs.front().info.bytes_per_token;
      md << "\nLosses in nats per token. In bits per byte (" << num(s.runs.front().info.bytes_per_token, 3)
         << " bytes per token): divide A" << (s.options.irreducible ? " and E" : "") << " by "
         << "ln 2 x bytes_per_token = " << num(k, 4) << "; alpha is unchanged.\n";
    } else {
      md << "\nLosses in nats per token (the runs differ in bytes per token, so the laws have "
            "no single form in bits per byte).\n";
    }
  }
  for (Compute c : s.options.computes) {
    md << "\n### Compute: " << compute_label(c) << (c == Compute::k6nd ? " (the paper's)" : "")
       << "\n\n| metric | attention | fit | A | alpha |" << (s.options.irreducible ? " E |" : "")
       << " frontier points | rms log residual |\n|---|---|---|---|---|"
       << (s.options.irreducible ? "---|" : "") << "---|---|\n";
    for (const FitResult& f : s.fits) {
      if (f.compute != c) continue;
      md << "| " << s.label(f.metric) << " | " << attention_label(f.attention) << " | ";
      if (!f.fit) {
        md << "no fit: " << f.why_no_fit << " | | |" << (s.options.irreducible ? " |" : "")
           << " " << f.frontier.size() << " | |\n";
        continue;
      }
      md << "`" << formula(s, f) << "` | " << num(f.fit->law.A)
         << interval(f.bootstrap, &Bootstrap::A) << " | " << num(f.fit->law.alpha)
         << interval(f.bootstrap, &Bootstrap::alpha) << " | ";
      if (s.options.irreducible)
        md << num(f.fit->law.E) << interval(f.bootstrap, &Bootstrap::E) << " | ";
      md << f.fit->points << " | " << num(f.fit->rms_log_residual, 4) << " |\n";
    }
  }

  // The two fits compared, with intervals from their bootstraps.
  std::optional<FitComparison> lm_6nd;  // the LM loss's under 6ND, for the verdict's law sentence
  {
    std::string rows;
    for (Compute c : s.options.computes)
      for (const FitResult& m : s.fits) {
        if (m.compute != c || m.attention != "moba" || !m.fit || !m.bootstrap) continue;
        const FitResult* f = s.find(m.metric, "full", c);
        if (!f || !f->fit || !f->bootstrap) continue;
        double c_star = 0;  // the end of the data: the largest frontier compute of either type
        for (const FitResult* r : {&m, f})
          for (const FrontierPoint& p : r->frontier) c_star = std::max(c_star, p.c);
        const std::optional<FitComparison> cmp =
            compare_fits(m.fit->law, *m.bootstrap, f->fit->law, *f->bootstrap, c_star);
        if (!cmp) continue;
        if (m.metric.kind == Metric::kLm && c == Compute::k6nd) lm_6nd = cmp;
        const auto ci = [](double v, const Interval& i, int d) {
          return num(v, d) + " [" + num(i.lo, d) + ", " + num(i.hi, d) + "]";
        };
        rows += "| " + s.label(m.metric) + " | " + compute_label(c) + " | " +
                ci(cmp->alpha_diff, cmp->alpha_diff_ci, 3) + " | " +
                ci(cmp->A_ratio, cmp->A_ratio_ci, 3) + " | " + sci(cmp->c_star) + " | " +
                ci(cmp->loss_ratio, cmp->loss_ratio_ci, 4) + " | " +
                std::to_string(cmp->replicas) + " |\n";
      }
    if (!rows.empty())
      md << "\n### MoBA against full attention: the fits compared\n\n"
            "95% intervals from the two bootstraps (replica i of one type against replica i "
            "of the other; both drawn with the same seed, so with the same sizes they resample "
            "the same sizes). C* is the largest compute on either frontier (PFLOP/s-days).\n\n"
            "| metric | compute | alpha MoBA - full | A MoBA / full | C* | loss MoBA / full at C* "
            "| replicas |\n|---|---|---|---|---|---|---|\n"
         << rows;
  }

  // MoBA / full per size.
  const std::vector<SizePair> pairs = pair_by_size(s.runs);
  std::vector<std::string> seed_notes;
  const std::vector<SizeSeeds> seeds = seed_noise(pairs, &seed_notes);
  // A pair's size, and its seed where the size has seed replicas.
  std::vector<const SizeSeeds*> group_of(pairs.size(), nullptr);
  for (const SizeSeeds& g : seeds)
    for (size_t i : g.pairs) group_of[i] = &g;
  const auto pair_label = [&](size_t i) {
    return size_label(*pairs[i].full) +
           (group_of[i] ? ", seed " + std::to_string(pairs[i].full->info.seed) : "");
  };
  md << "\n## MoBA / full attention, per model size\n\n";
  if (pairs.empty()) {
    md << "No size has both a full-attention and a MoBA run.\n";
  } else {
    md << "Each pair compared at the largest token count both runs evaluated.\n\n"
          "Losses in nats per token; the LM losses also in bits per byte.\n\n"
          "| size | tokens | LM loss full | LM loss MoBA | LM bits/byte full / MoBA | MoBA / full | "
          "trailing full | trailing MoBA | MoBA / full (trailing) |\n"
          "|---|---|---|---|---|---|---|---|---|\n";
    for (size_t i = 0; i < pairs.size(); ++i) {
      const SizePair& p = pairs[i];
      if (!p.full_point || !p.moba_point) continue;
      md << "| " << pair_label(i) << " | " << si(p.full_point->tokens)
         << (p.same_tokens ? "" : " / " + si(p.moba_point->tokens) + " (unequal)") << " | "
         << num(p.full_point->loss) << " | " << num(p.moba_point->loss) << " | "
         << num(bits_per_byte(p.full_point->loss, p.full->info.bytes_per_token)) << " / "
         << num(bits_per_byte(p.moba_point->loss, p.moba->info.bytes_per_token)) << " | "
         << num(p.moba_point->loss / p.full_point->loss, 4) << " | "
         << num(p.full_point->trailing_loss) << " | " << num(p.moba_point->trailing_loss) << " | "
         << num(p.moba_point->trailing_loss / p.full_point->trailing_loss, 4) << " |\n";
    }
  }

  // Paired over validation windows.
  md << "\n## MoBA - full attention, paired over validation windows\n\n";
  std::vector<std::optional<PairedStats>> stats(pairs.size());
  std::string paired_rows, not_paired;
  size_t nb = 0;
  for (size_t i = 0; i < pairs.size(); ++i) {
    std::string why;
    stats[i] = paired_stats(pairs[i], 2000, 1, &why);
    if (!stats[i]) {
      not_paired += "- " + pair_label(i) + ": " + why + "\n";
      continue;
    }
    const PairedStats& st = *stats[i];
    nb = std::max(nb, st.bucket_diff.size());
    const auto est = [](const Estimate& e, int d) {
      return num(e.value, d) + " [" + num(e.lo, d) + ", " + num(e.hi, d) + "]";
    };
    paired_rows += "| " + pair_label(i) + " | " + std::to_string(st.windows) + " | " +
                   est(st.diff, 4) + " | " + est(st.ratio, 4) + " |";
    for (const Estimate& b : st.bucket_diff) paired_rows += " " + est(b, 3) + " |";
    paired_rows += "\n";
  }
  // One interval per size for the verdict: a size with seed replicas once (the wider of its
  // seeds' t interval and its lowest seed's window bootstrap), in the order of the sizes.
  std::vector<VerdictInterval> verdict;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const SizeSeeds* g = group_of[i];
    if (!g && stats[i])
      verdict.push_back(verdict_interval(size_label(*pairs[i].full), stats[i], nullptr));
    if (g && i == *std::min_element(g->pairs.begin(), g->pairs.end()))
      verdict.push_back(verdict_interval(size_label(*pairs[i].full), stats[g->pairs.front()], g));
  }
  if (!paired_rows.empty()) {
    const int64_t bs = pairs.front().full_point ? pairs.front().full_point->bucket_size : 0;
    md << "At the largest token count both runs evaluated; 95% percentile bootstrap intervals "
          "(2000 resamples of the validation windows, the same resample for both runs).\n\n"
          "| size | windows | MoBA - full (nats/token) | MoBA / full |";
    for (size_t b = 0; b < nb; ++b)
      md << " MoBA - full, " << si(static_cast<double>(b * bs)) << "-"
         << si(static_cast<double>((b + 1) * bs)) << " |";
    md << "\n|---|---|---|---|";
    for (size_t b = 0; b < nb; ++b) md << "---|";
    md << "\n" << paired_rows;
  }
  if (!verdict.empty()) md << "\n**Verdict.** " << paired_verdict(verdict) << "\n";
  if (lm_6nd) md << "\n**The laws.** " << law_sentence(*lm_6nd) << "\n";
  if (!not_paired.empty())
    md << (paired_rows.empty() && verdict.empty() ? "" : "\n") << "Not paired:\n\n" << not_paired;

  // Seed noise.
  md << "\n## Seed noise\n\n";
  if (seeds.empty()) {
    md << "No size has both attention types trained at two or more seeds (`[search] seeds`, "
          "docs/sweep.md): the intervals above hold the noise of the validation windows "
          "only.\n";
  } else {
    const auto list = [](const std::vector<double>& x, int d) {
      std::string out;
      for (size_t i = 0; i < x.size(); ++i) out += (i ? ", " : "") + num(x[i], d);
      return out;
    };
    const auto seed_list = [](const std::vector<int64_t>& x) {
      std::string out;
      for (size_t i = 0; i < x.size(); ++i) out += (i ? ", " : "") + std::to_string(x[i]);
      return out;
    };
    md << "Each size below was trained with both attention types at every seed listed "
          "(train.seed: the initialisation and the order of training batches; the two types of "
          "one seed see the same batches and validation windows). Final LM losses in nats per "
          "token, at each run's last validation point; sd is the sample standard deviation "
          "over the seeds (n - 1).\n\n"
          "| size | attention | seeds | final LM loss per seed | mean | sd |\n"
          "|---|---|---|---|---|---|\n";
    for (const SizeSeeds& g : seeds)
      for (const SeedLosses* l : {&g.full, &g.moba})
        md << "| " << size_label(*pairs[g.pairs.front()].full) << " | "
           << attention_label(l->attention) << " | " << seed_list(l->seeds) << " | "
           << list(l->losses, 4) << " | " << num(l->stats.mean, 4) << " | "
           << num(l->stats.sd, 4) << " |\n";
    md << "\nMoBA - full per seed (nats/token, at the token count the pair is compared at "
          "above), its mean over the seeds and the 95% t interval of that mean (Student t, "
          "n - 1 degrees of freedom), beside the 95% window-bootstrap interval of the lowest "
          "seed's pair. The verdict uses, per size, the wider of the two.\n\n"
          "| size | seeds | MoBA - full per seed | mean | 95% t interval over seeds | "
          "window bootstrap (lowest seed) | verdict uses |\n"
          "|---|---|---|---|---|---|---|\n";
    for (const SizeSeeds& g : seeds) {
      const size_t lowest = g.pairs.front();
      const VerdictInterval v =
          verdict_interval(size_label(*pairs[lowest].full), stats[lowest], &g);
      const std::optional<PairedStats>& w = stats[lowest];
      md << "| " << v.size << " | " << seed_list(g.seeds) << " | " << list(g.diff, 4) << " | "
         << num(g.diff_ci.mean, 4) << " | [" << num(g.diff_ci.lo, 4) << ", "
         << num(g.diff_ci.hi, 4) << "] | "
         << (w ? num(w->diff.value, 4) + " [" + num(w->diff.lo, 4) + ", " + num(w->diff.hi, 4) +
                     "] (seed " + std::to_string(g.seeds.front()) + ")"
               : "not paired")
         << " | "
         << (!w ? "t over seeds (windows not paired)"
             : v.from_seeds ? "t over seeds (wider)"
                            : "window bootstrap (wider)")
         << " |\n";
    }
  }
  if (!seed_notes.empty()) md << "\n";
  for (const std::string& n : seed_notes) md << "- " << n << "\n";

  // Trailing loss.
  md << "\n## Trailing loss\n\n";
  const FitResult* tf = s.find(Metric::trailing(), "full", Compute::k6nd);
  const FitResult* tm = s.find(Metric::trailing(), "moba", Compute::k6nd);
  if (tf && tm && tf->fit && tm->fit) {
    md << "The last " << positions_label(s.bucket_size) << " positions of each "
       << positions_label(s.runs.front().info.seq_len) << "-token window, on windows that reach "
       << "that length inside one document. Fits (6ND):\n\n- `" << formula(s, *tm) << "`\n- `"
       << formula(s, *tf) << "`\n\nProjected MoBA / full trailing-loss ratio:\n\n"
       << "| C (PFLOP/s-days) | full | MoBA | MoBA / full |\n|---|---|---|---|\n";
    // The fitted range of compute, where both fits rest on data.
    const double c_lo = std::max({tf->fit_c_min, tm->fit_c_min, tf->frontier.front().c,
                                  tm->frontier.front().c});
    const double c_hi = std::min(tf->frontier.back().c, tm->frontier.back().c);
    for (double c : {c_lo, std::sqrt(c_lo * c_hi), c_hi, 10 * c_hi, 100 * c_hi}) {
      const double lf = tf->fit->law(c), lm = tm->fit->law(c);
      char cbuf[32];
      std::snprintf(cbuf, sizeof cbuf, "%.3g", c);
      md << "| " << cbuf << (c > c_hi * 1.001 ? " (extrapolated)" : "") << " | " << num(lf)
         << " | " << num(lm) << " | " << num(lm / lf, 4) << " |\n";
    }
    md << "\n" << ratio_trend(tf->fit->law, tm->fit->law, c_lo, c_hi) << "\n";
  } else {
    md << "No trailing-loss fit for both attention types (the runs carry no trailing loss, or "
          "too few points).\n";
  }

  if (plan_times) md << "\n" << plan_times_markdown(*plan_times);

  // Figures.
  md << "\n## Figures\n\n";
  if (figures.empty())
    md << "No figures: " << (plotting_available() ? "nothing to draw." : "this moba was built without cairo.") << "\n";
  for (const ReportFigure& f : figures)
    md << "**" << f.caption << "**\n\n![" << f.caption << "](" << f.path << ")\n\n";

  if (!s.notes.empty()) {
    md << "\n## Notes\n\n";
    for (const std::string& n : s.notes) md << "- " << n << "\n";
  }
  return md.str();
}

fs::path write_report(const fs::path& runs_dir, const fs::path& out_dir, const ReportOptions& o) {
  std::vector<Run> runs = read_runs(runs_dir);
  // Before the study, which may leave failed runs out: the comparison lists them as such.
  const std::optional<PlanTimes> times = plan_times(runs, runs_dir);
  Study s = run_study(std::move(runs), o.study);
  fs::create_directories(out_dir);
  std::vector<ReportFigure> figures;
  if (plotting_available()) {
    std::vector<std::pair<Metric, Compute>> drawn = {{Metric::lm(), Compute::k6nd}};
    const auto has = [&](const Metric& m) {
      return std::any_of(s.fits.begin(), s.fits.end(), [&](const FitResult& f) { return f.metric == m; });
    };
    int bucket = o.bucket;
    if (bucket < 0) {
      bucket = has(Metric::position_bucket(2)) ? 2 : -1;
      for (int i = 0; bucket < 0 && has(Metric::position_bucket(i)); ++i)
        if (!has(Metric::position_bucket(i + 1))) bucket = i;
    }
    if (bucket >= 0) {
      MOBA_CHECK(has(Metric::position_bucket(bucket)), "--bucket ", bucket,
                 " is not a bucket of these runs");
      drawn.push_back({Metric::position_bucket(bucket), Compute::k6nd});
    }
    if (has(Metric::trailing())) drawn.push_back({Metric::trailing(), Compute::k6nd});
    if (std::find(s.options.computes.begin(), s.options.computes.end(), Compute::kExec) !=
        s.options.computes.end())
      drawn.push_back({Metric::lm(), Compute::kExec});
    for (const auto& [m, c] : drawn)
      for (const fs::path& p : write_figures(s, m, c, out_dir / "figures"))
        if (p.extension() == ".png")
          figures.push_back({s.label(m) + ", " + compute_label(c) +
                                 (p.stem().string().ends_with("_runs")
                                      ? ": every run under the fitted projections"
                                      : ": frontier and fitted projections"),
                             "figures/" + p.filename().string()});
  }
  {
    std::ofstream f(out_dir / "fits.json");
    MOBA_CHECK(f.good(), "cannot write '", (out_dir / "fits.json").string(), "'");
    f << to_json(s).dump(2) << "\n";
  }
  if (times) {
    // The comparison's figures unrounded (scripts/fit-time-model.py reads them).
    std::ofstream f(out_dir / "plan_times.json");
    MOBA_CHECK(f.good(), "cannot write '", (out_dir / "plan_times.json").string(), "'");
    f << plan_times_json(*times).dump(2) << "\n";
  }
  const fs::path report = out_dir / "report.md";
  std::ofstream f(report);
  MOBA_CHECK(f.good(), "cannot write '", report.string(), "'");
  f << report_markdown(s, runs_dir.string(), figures, times);
  return report;
}

}  // namespace moba::scaling
