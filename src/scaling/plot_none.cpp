// Builds without cairo: the figure commands explain what is missing.
#include "core/error.h"
#include "scaling/lr_search.h"
#include "scaling/plot.h"

namespace moba::scaling {

bool plotting_available() { return false; }

std::vector<std::filesystem::path> write_figures(const Study&, const Metric&, Compute,
                                                 const std::filesystem::path&, double) {
  throw Error("this moba was built without cairo, so it cannot draw figures "
              "(apt-get install libcairo2-dev, then rebuild)");
}

std::vector<std::filesystem::path> write_lr_figure(const LrSearch&, const std::filesystem::path&,
                                                   double) {
  throw Error("this moba was built without cairo, so it cannot draw figures "
              "(apt-get install libcairo2-dev, then rebuild)");
}

}  // namespace moba::scaling
