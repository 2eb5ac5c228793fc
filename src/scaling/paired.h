// Paired statistics of MoBA against full attention at one model size: both attention types
// of a size are validated on the same windows (same data, same seed: the windows_hash of
// their val lines agrees), so the difference can be taken window by window and its
// uncertainty estimated by a bootstrap over windows (resampling windows with replacement,
// the same resample for both runs). Needs runs whose val lines carry window_losses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "scaling/report.h"

namespace moba::scaling {

// A point estimate with its 95% percentile bootstrap interval.
struct Estimate {
  double value = 0.0, lo = 0.0, hi = 0.0;
};

struct PairedStats {
  int64_t windows = 0;
  double full_loss = 0.0, moba_loss = 0.0;  // means over the windows (= the val lines' loss)
  Estimate diff;                 // MoBA - full, nats/token
  Estimate ratio;                // MoBA / full
  std::vector<Estimate> bucket_diff;  // MoBA - full per position bucket
};

// nullopt, with the reason in *why, when the pair cannot be compared window by window (no
// common evaluation point, val lines without window_losses, different windows).
std::optional<PairedStats> paired_stats(const SizePair& p, int resamples, uint64_t seed,
                                        std::string* why);

// The interval one size's verdict rests on (seeds.h, verdict_interval()): the window
// bootstrap of its pair, or where the size has seed replicas the wider of that and the t
// interval over the seeds.
struct VerdictInterval {
  std::string size;          // the size, as the report names it ("" in tests)
  Estimate diff, ratio;      // the chosen interval: MoBA - full, MoBA / full
  bool from_seeds = false;   // the t interval over seeds was chosen
  int64_t seeds = 0;         // seeds at the size (0: no seed replicas)
  int64_t windows = 0;       // validation windows of the bootstrap (0: not paired)
};

// One sentence stating what the intervals support across the sizes compared, e.g.
// "MoBA's LM loss is within 1.3% of full attention's at every size compared (3 sizes, 95%
// bootstrap intervals over 16 validation windows)"; where every size's interval excludes
// equality on the same side it first says so, with the range of the point estimates
// ("MoBA's LM loss is lower than full attention's by 2.1% to 19.8% (point estimates), and
// within 21.0% ..."). Where sizes have seed replicas it says which interval each size
// used. Empty when `sizes` is empty.
std::string paired_verdict(const std::vector<VerdictInterval>& sizes);
// The same with the window bootstrap at every size (no seeds).
std::string paired_verdict(const std::vector<PairedStats>& stats);

}  // namespace moba::scaling
