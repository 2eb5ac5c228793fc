// moba: one executable, one subcommand per job.
//
// Exit codes (README "Use"): 0 success, --help, --version, and `moba` or `moba bench` alone
// (which print their help); 2 an error in the arguments or the inputs, printed as
// `moba: error: ...` (CLI11's own parse errors included, with a pointer to the command's
// --help); 3 an internal error (a bug).
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "cli/launcher.h"
#include "core/build_info.h"
#include "core/error.h"
#include "dist/communicator.h"

namespace {

// The deepest command the parser had reached: "moba", "moba fit", "moba bench attention".
const CLI::App* reached(const CLI::App& app) {
  const CLI::App* a = &app;
  while (!a->get_subcommands().empty()) a = a->get_subcommands().front();
  return a;
}

std::string command_path(const CLI::App* a) {
  std::string path;
  for (; a != nullptr; a = a->get_parent())
    path = a->get_parent() == nullptr ? "moba" + path : " " + a->get_name() + path;
  return path;
}

std::string command_names(const CLI::App& a) {
  std::string names;
  for (const CLI::App* s : a.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + s->get_name();
  return names;
}

// A CLI11 parse error as `moba: error: ...`, exit 2. An argument nothing takes is named:
// an unknown option, or at the level of a command group (moba, moba bench) an unknown
// command.
int argument_error(const CLI::App& app, const CLI::ParseError& e) {
  const CLI::App* at = reached(app);
  const std::string path = command_path(at);
  std::string message = e.what();
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    const auto extras = at->remaining();
    const std::string first = extras.empty() ? std::string() : extras.front();
    const bool group = !at->get_subcommands([](const CLI::App*) { return true; }).empty();
    if (first.size() > 1 && first[0] == '-')
      message = "unknown option '" + first + "'";
    else if (group && !first.empty())
      message = "unknown command '" + first + "' (" + path + " has: " + command_names(*at) + ")";
  }
  const std::string where = at->get_parent() == nullptr ? "" : path.substr(5) + ": ";
  std::fprintf(stderr, "moba: error: %s%s\n(`%s --help` lists the options)\n", where.c_str(),
               message.c_str(), path.c_str());
  return 2;
}

// Did the command get any option? (`moba eval --run R` is eval itself, not the group
// `moba eval` without its command.)
bool took_options(const CLI::App* a) {
  for (const CLI::Option* o : a->get_options())
    if (o->count() > 0) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  moba::cli::remember_args(argc, argv);  // `moba train --gpus N` starts its ranks with them
  CLI::App app{"moba: MoBA (Mixture of Block Attention) kernels, trainer and scaling study"};
  app.name("moba");  // in usage lines, whatever the path it was started by
  app.set_version_flag("--version", moba::version());
  moba::cli::add_info(app);
  moba::cli::add_bench(app);
#ifdef MOBA_HAVE_CUDA_ATTENTION
  moba::cli::add_bench_decode(app.get_subcommand("bench"));
#endif
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
  moba::cli::add_generate(app);
  // After the commands, which would inherit it.
  app.footer(
      "`moba` alone prints this help; `moba <command> --help` shows a command's options.\n"
      "Every command that writes a file or a folder takes it as -o/--out; --device is cpu "
      "unless given; progress goes to stderr, results to stdout. Exit codes: 0 success, 2 an "
      "error in the arguments or the inputs (`moba: error: ...`), 3 an internal error.");
  try {
    app.parse(argc, argv);
    // A command group without its command and options (`moba`, `moba bench`): its help, as
    // --help would. (`moba eval` is a command with options and a subcommand, passkey.)
    const CLI::App* at = reached(app);
    if (!at->get_subcommands([](const CLI::App*) { return true; }).empty() && !took_options(at)) {
      std::fputs(app.help().c_str(), stdout);  // the selected group's, as --help prints it
      return 0;
    }
  } catch (const CLI::Success& e) {  // --help, --help-all, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return argument_error(app, e);
  } catch (const moba::dist::CollectiveTimeout& e) {
    std::fprintf(stderr, "moba: error: %s\n", e.what());
    return moba::cli::kExitCollectiveTimeout;
  } catch (const moba::Error& e) {
    std::fprintf(stderr, "moba: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moba: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
