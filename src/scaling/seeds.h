// Seed noise (issue 13, section 2): how far a size's final loss moves from one training
// seed to the next, and what that does to the MoBA - full comparison.
//
// A sweep with `[search] seeds = [...]` (docs/sweep.md) trains each (size, attention) once
// per seed; train.seed sets the initialisation and the order of training batches, and both
// attention types of one seed share it, so each seed is still a pair on the same batches and
// validation windows (report.h's pair_by_size pairs runs of one seed only). Per size with
// two or more seeds the report gives each attention type's final losses over the seeds
// (mean, sample standard deviation), the MoBA - full difference per seed, its mean and a
// Student t interval over the seeds (n - 1 degrees of freedom), beside the window-bootstrap
// interval of the lowest seed's pair (paired.h). The verdict then rests, per size, on the
// wider of the two (verdict_interval()).
//
// Fits stay one run per (size, attention): fit_runs() keeps the lowest seed of each, so
// replicas neither pull the frontier down (it is a lower envelope) nor weigh in the
// bootstrap over runs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "scaling/paired.h"
#include "scaling/report.h"
#include "scaling/runs.h"

namespace moba::scaling {

// Student's t distribution with `dof` >= 1 degrees of freedom: P(T <= t), from the closed
// forms for integer dof (a finite sum in cos(theta), theta = atan(t / sqrt(dof))).
double student_t_cdf(double t, int64_t dof);
// Its quantile: the t with student_t_cdf(t, dof) = p, 0 < p < 1 (bisection to 1e-12).
// student_t_quantile(0.975, 2) = 4.303, the two-sided 95% point for 3 seeds.
double student_t_quantile(double p, int64_t dof);

// Mean, sample standard deviation (n - 1) and the two-sided t interval at `level` of the
// mean of `x`: mean +- t_{(1 + level) / 2, n - 1} x sd / sqrt(n). Needs n >= 2.
struct TInterval {
  int64_t n = 0;
  double mean = 0.0, sd = 0.0, lo = 0.0, hi = 0.0;
};
TInterval t_interval(const std::vector<double>& x, double level = 0.95);

// Runs that are the same run but for train.seed: same attention, shape, steps, warm-up,
// embeddings, learning rate and MoBA settings. Two runs are seed replicas when their keys
// are equal and their seeds known and different.
std::string replica_key(const RunInfo& r);

// Which runs the fits use: every run, except that of runs differing only in their seed the
// lowest seed is kept (runs whose seed is unknown are always kept). Indexed as `runs`.
std::vector<bool> fit_runs(const std::vector<Run>& runs);

// One attention type's final losses (its last validation point) over the seeds of a size.
struct SeedLosses {
  std::string attention;
  std::vector<int64_t> seeds;   // ascending
  std::vector<double> losses;   // per seed
  TInterval stats;              // mean, sd (and the t interval of the mean)
};

// One size (one replica key) with both attention types trained at two or more seeds.
struct SizeSeeds {
  std::vector<size_t> pairs;    // indices into the pairs given to seed_noise(), by seed
  std::vector<int64_t> seeds;   // ascending, one per pair
  SeedLosses full, moba;        // final losses per seed
  // MoBA - full and MoBA / full per seed at each pair's compared point (report.h: the
  // largest token count both evaluated; the final one for finished runs), and their t
  // intervals over the seeds.
  std::vector<double> diff, ratio;
  TInterval diff_ci, ratio_ci;
};

// The sizes of `pairs` (pair_by_size) with seed replicas. A size whose pairs repeat a seed
// is left out, with a line in *notes.
std::vector<SizeSeeds> seed_noise(const std::vector<SizePair>& pairs,
                                  std::vector<std::string>* notes = nullptr);

// The interval a size's verdict rests on (paired.h): the window bootstrap of its lowest
// seed's pair, or, where the size has seed replicas, the wider (MoBA - full, in nats) of that
// and the t interval over the seeds. Either may be absent (windows not paired, no seeds),
// not both.
VerdictInterval verdict_interval(const std::string& size, const std::optional<PairedStats>& windows,
                                 const SizeSeeds* seeds);

}  // namespace moba::scaling
