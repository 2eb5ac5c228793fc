// moba: one executable, one subcommand per job.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/build_info.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moba: MoBA (Mixture of Block Attention) kernels, trainer and scaling study"};
  app.set_version_flag("--version", moba::version());
  app.require_subcommand(1);
  moba::cli::add_info(app);
  moba::cli::add_bench(app);
  moba::cli::add_prepare(app);
  moba::cli::add_fit(app);
#ifdef MOBA_WITH_CAIRO
  moba::cli::add_plot(app);
#endif
  moba::cli::add_report(app);
  moba::cli::add_train(app);
  moba::cli::add_sweep(app);
  moba::cli::add_eval(app);
  moba::cli::add_export_hf(app);
  moba::cli::add_import_hf(app);
  moba::cli::add_logits(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const moba::Error& e) {
    std::fprintf(stderr, "moba: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moba: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
