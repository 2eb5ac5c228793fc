// The run configuration: defaults, resolution, round trip, and errors that name the key.
#include "train/config.h"

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"

namespace moba::train {
namespace {

const char* kMinimal = R"(
name = "t"
[model]
vocab_size = 32
width = 48
heads = 4
seq_len = 64
[train]
tokens = 10000
)";

TEST(Config, DefaultsAreResolved) {
  const RunConfig c = parse_config(kMinimal, "test.toml");
  EXPECT_EQ(c.model.head_dim, 12);
  EXPECT_EQ(c.model.kv_heads, 4);
  EXPECT_EQ(c.model.mlp_hidden, 256);  // 8*48/3 = 128, rounded up to 256
  EXPECT_EQ(c.train.steps, 20);        // ceil(10000 / (8 * 64))
  EXPECT_EQ(c.tokens_planned(), 20 * 8 * 64);
  EXPECT_EQ(c.eval.bucket_size, 8);
  EXPECT_EQ(c.data, "synthetic:assoc_recall");
  EXPECT_EQ(c.model.attention.kind, model::AttentionKind::moba);
}

TEST(Config, ResolvedTomlRoundTrips) {
  std::string text = std::string(kMinimal) +
                     "[attention]\nmoba_to_full_at = 0.9\n"
                     "full_attention_last_layers = 1\n";
  const RunConfig c = parse_config(text, "test.toml");
  const std::string once = to_toml(c);
  const RunConfig again = parse_config(once, "config.toml");
  EXPECT_EQ(to_toml(again), once);
  EXPECT_EQ(again.model.attention.moba_to_full_at, 0.9);
  EXPECT_NE(once.find("moba_to_full_at = 0.9\n"), std::string::npos) << once;
}

void expect_error(const std::string& text, const std::string& needle) {
  try {
    parse_config(text, "bad.toml");
    FAIL() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << needle;
    EXPECT_NE(std::string(e.what()).find("bad.toml"), std::string::npos) << e.what();
  }
}

TEST(Config, Errors) {
  const std::string m = kMinimal;
  expect_error(m + "[eval]\nevrey = 3\n", "unknown key 'eval.evrey'");
  expect_error(m + "[optimizer]\nlr = 1\n", "unknown key 'optimizer'");
  expect_error("colour = 1\n" + m, "unknown key 'colour'");
  expect_error(R"([model]
width = "wide"
[train]
steps = 3
)",
               "model.width must be an integer, got a string");
  expect_error(m + "[attention]\ntop_k = 0\n", "attention.top_k must be >= 1");
  expect_error(m + "[attention]\nkind = \"sparse\"\n",
               "attention.kind must be \"full\" or \"moba\"");
  expect_error(m + "[attention]\nmoba_to_full_at = 1.5\n",
               "attention.moba_to_full_at must be in [0, 1]");
  expect_error(m + "[attention]\nfull_attention_last_layers = 9\n",
               "attention.full_attention_last_layers must be in [0, model.layers = 4]");
  expect_error("[train]\nsteps = 3\n[model]\nheads = 3\nwidth = 64\n",
               "model.width (64) is not a multiple of model.heads (3)");
  expect_error("[train]\nsteps = 3\n[model]\nheads = 4\nkv_heads = 3\n",
               "model.heads (4) must be a multiple of model.kv_heads (3)");
  expect_error("[train]\nsteps = 3\nlr = -0.1\n", "train.lr must be in (0, 10)");
  expect_error("[train]\nsteps = 3\nlr = true\n", "train.lr must be a number, got a boolean");
  expect_error("[train]\nsteps = 3\ntokens = 100\n",
               "set exactly one of train.steps and train.tokens");
  expect_error("[model]\nwidth = 64\n", "set exactly one of train.steps and train.tokens");
  expect_error("[train]\nsteps = 3\nbatch_size = 0\n", "train.batch_size must be >= 1");
  expect_error("[train]\nsteps = 3\n[eval]\nbucket_size = 5000\n", "eval.bucket_size must be in");
  expect_error("[train]\nsteps = = 3\n", "TOML syntax error at line 2");
  expect_error("model = 3\n[train]\nsteps = 3\n", "'model' must be a table");
}

TEST(Config, DataPacking) {
  const std::string shards = "data = \"data/pydoc\"\n";
  const RunConfig d = parse_config(shards + kMinimal, "test.toml");
  EXPECT_EQ(d.data_packing, "document");
  // The default is not written, so that config.toml of runs made before the key still
  // matches (resume and sweeps compare it as text).
  EXPECT_EQ(to_toml(d).find("data_packing"), std::string::npos) << to_toml(d);
  const RunConfig p =
      parse_config(shards + "data_packing = \"packed\"\n" + kMinimal, "test.toml");
  EXPECT_EQ(p.data_packing, "packed");
  const std::string text = to_toml(p);
  EXPECT_NE(text.find("data_packing = 'packed'\n"), std::string::npos) << text;
  EXPECT_EQ(parse_config(text, "config.toml").data_packing, "packed");
  EXPECT_EQ(to_toml(parse_config(text, "config.toml")), text);

  expect_error(shards + "data_packing = \"pack\"\n" + kMinimal,
               "data_packing must be \"document\" (one document per row) or \"packed\"");
  expect_error(shards + "data_packing = \"pack\"\n" + kMinimal, "got \"pack\"");
  expect_error(shards + "data_packing = true\n" + kMinimal,
               "data_packing must be a string, got a boolean");
  // Synthetic sources make their own rows.
  expect_error("data_packing = \"packed\"\n" + std::string(kMinimal),
               "data_packing = \"packed\" applies to token shards");
}

TEST(Config, MissingFileIsAnError) { EXPECT_THROW(load_config("/nonexistent/x.toml"), Error); }

}  // namespace
}  // namespace moba::train
