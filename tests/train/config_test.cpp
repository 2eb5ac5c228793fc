// The run configuration: defaults, resolution, round trip, and errors that name the key.
#include "train/config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/supports.h"

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
  const RunConfig p =
      parse_config(shards + "data_packing = \"packed\"\n" + kMinimal, "test.toml");
  EXPECT_EQ(p.data_packing, "packed");
  const std::string text = to_toml(p);
  EXPECT_NE(text.find("data_packing = \"packed\"\n"), std::string::npos) << text;
  EXPECT_EQ(parse_config(text, "config.toml").data_packing, "packed");
  EXPECT_EQ(to_toml(parse_config(text, "config.toml")), text);

  expect_error(shards + "data_packing = \"pack\"\n" + kMinimal,
               "data_packing must be \"document\" or \"packed\", got \"pack\"");
  expect_error(shards + "data_packing = true\n" + kMinimal,
               "data_packing must be a string, got a boolean");
  // Synthetic sources make their own rows.
  expect_error("data_packing = \"packed\"\n" + std::string(kMinimal),
               "data_packing = \"packed\" applies to token shards");
}

// Every key, none at its default, survives parse -> write -> parse; the text names every
// key of the schema, and strings that need escapes come back whole.
TEST(Config, SchemaRoundTripsEveryKey) {
  const std::string text = R"(
name = "a \"quoted\" name \\ with\ttab"
data = "data/some folder"
data_packing = "packed"
[model]
vocab_size = 40
width = 96
layers = 3
heads = 6
kv_heads = 3
head_dim = 18
mlp_hidden = 200
mlp_multiple_of = 32
seq_len = 96
tied_embeddings = false
rope_theta = 5e5
norm_eps = 1e-6
init_std = 0.01
[attention]
kind = "full"
block_size = 24
top_k = 5
full_attention_last_layers = 2
moba_to_full_at = 0.7
[train]
batch_size = 3
grad_accum = 2
steps = 17
lr = 3e-4
min_lr_ratio = 0.2
warmup_steps = 4
weight_decay = 0.05
beta1 = 0.8
beta2 = 0.99
eps = 1e-9
grad_clip = 0.5
seed = 12345678901
[eval]
every = 5
windows = 7
batch_size = 2
bucket_size = 12
data = "data/other"
[checkpoint]
every = 6
[log]
every = 3
)";
  const RunConfig a = parse_config(text, "all.toml");
  const std::string written = to_toml(a);
  const RunConfig b = parse_config(written, "config.toml");
  EXPECT_TRUE(run_schema().equal(a, b)) << written;
  EXPECT_EQ(to_toml(b), written);
  EXPECT_EQ(b.name, "a \"quoted\" name \\ with\ttab");
  EXPECT_EQ(b.train.seed, 12345678901u);
  EXPECT_EQ(b.model.attention.kind, model::AttentionKind::full);
  const RunConfig defaults = RunConfig{}.resolved();
  for (const auto& f : run_schema().fields()) {
    const std::string leaf = f.key.substr(f.key.rfind('.') + 1);
    EXPECT_NE(written.find("\n" + leaf + " = "), std::string::npos) << f.key;
    if (f.key != "train.tokens")  // the resolved form keeps steps
      EXPECT_NE(f.get(a), f.get(defaults)) << f.key << " is at its default: test it";
  }
  // run.json's "config" holds the same values.
  EXPECT_EQ(config_json(a)["model"]["head_dim"], 18);
  EXPECT_EQ(config_json(a)["attention"]["kind"], "full");
  EXPECT_EQ(config_json(a)["eval"]["data"], "data/other");
}

TEST(Config, SetOverridesAnyKey) {
  const RunConfig c = parse_config(kMinimal, "test.toml",
                                   {"model.width=96", "attention.top_k=4", "attention.kind=full",
                                    "train.lr = 2e-3", "name=\"x y\"", "data=data/d",
                                    "model.tied_embeddings=false", "train.steps=7",
                                    "train.tokens=0"});
  EXPECT_EQ(c.model.width, 96);
  EXPECT_EQ(c.model.head_dim, 24);  // resolved after the override
  EXPECT_EQ(c.model.attention.top_k, 4);
  EXPECT_EQ(c.model.attention.kind, model::AttentionKind::full);
  EXPECT_EQ(c.train.lr, 2e-3);
  EXPECT_EQ(c.name, "x y");
  EXPECT_EQ(c.data, "data/d");
  EXPECT_FALSE(c.model.tied_embeddings);
  EXPECT_EQ(c.train.steps, 7);
  // The last --set of a key wins.
  EXPECT_EQ(parse_config(kMinimal, "t", {"model.layers=2", "model.layers=5"}).model.layers, 5);

  auto set_error = [](const std::string& set, const std::string& needle) {
    try {
      parse_config(kMinimal, "test.toml", {set});
      ADD_FAILURE() << set << ": no error, expected " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  set_error("model.widht=64", "unknown key 'model.widht' (did you mean 'model.width'?)");
  set_error("width=64", "did you mean 'model.width'?");
  set_error("colour=3", "--set: unknown key 'colour'; see docs/trainer.md");
  set_error("model.width=1.5", "--set model.width: model.width must be an integer, got a floating");
  set_error("model.width=wide", "--set model.width: 'wide' is not an integer");
  set_error("model.width=0", "model.width must be >= 1, got 0");
  set_error("attention.kind=sparse", "attention.kind must be \"full\" or \"moba\"");
  set_error("train.lr=true", "train.lr must be a number, got a boolean");
  set_error("model.width", "expected key=value");
  // Relations are checked after every override: heads (4) no longer divides width.
  set_error("model.width=50", "test.toml with --set: model.width (50) is not a multiple");
}

TEST(Config, MissingFileIsAnError) { EXPECT_THROW(load_config("/nonexistent/x.toml"), Error); }

}  // namespace
}  // namespace moba::train

namespace moba::train {
namespace {

// The docs' table of keys is generated from the schema (`moba train --schema`).
TEST(Config, DocsTableMatchesTheSchema) {
  std::ifstream f(std::string(MOBA_SOURCE_DIR) + "/docs/trainer.md");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string doc = ss.str();
  const std::string begin = "<!-- moba train --schema -->\n", end = "<!-- end -->";
  const size_t b = doc.find(begin), e = doc.find(end, b);
  ASSERT_NE(b, std::string::npos) << "docs/trainer.md lacks " << begin;
  ASSERT_NE(e, std::string::npos);
  EXPECT_EQ(doc.substr(b + begin.size(), e - b - begin.size()), config_markdown())
      << "regenerate the table: moba train --schema";
}

// A configuration the GPU kernels run: head dim 64, MoBA blocks of 64, widths multiples of 8.
RunConfig gpu_config(const std::vector<std::string>& sets = {}) {
  std::vector<std::string> all = {"model.width=256", "model.heads=4", "model.vocab_size=64",
                                  "model.mlp_multiple_of=64", "model.seq_len=256",
                                  "attention.block_size=64", "train.steps=2"};
  all.insert(all.end(), sets.begin(), sets.end());
  return parse_config("", "gpu.toml", all);
}

void expect_refused(const RunConfig& c, const std::string& reason) {
  const Support s = supports(c, "cuda");
  ASSERT_FALSE(s.ok()) << "accepted; expected: " << reason;
  EXPECT_NE(s.text().find(reason), std::string::npos) << s.text();
  EXPECT_TRUE(supports(c, "cpu").ok()) << supports(c, "cpu").text();  // the CPU runs it all
}

TEST(Supports, EachGpuLimitIsNamed) {
  EXPECT_TRUE(supports(gpu_config(), "cuda").ok()) << supports(gpu_config(), "cuda").text();
  EXPECT_TRUE(supports(gpu_config({"model.head_dim=128"}), "cuda").ok());
  expect_refused(gpu_config({"model.head_dim=32"}),
                 "model.head_dim = 32: the GPU attention kernels take head dims 64 and 128");
  expect_refused(gpu_config({"model.width=24", "model.heads=4", "model.head_dim=6"}),
                 "model.head_dim = 6");
  expect_refused(gpu_config({"attention.block_size=96"}),
                 "attention.block_size = 96: the GPU MoBA kernels need a power of two >= 64");
  expect_refused(gpu_config({"attention.block_size=32"}), "attention.block_size = 32");
  expect_refused(gpu_config({"attention.top_k=17"}),
                 "attention.top_k = 17: the GPU MoBA kernels take at most 16");
  expect_refused(gpu_config({"model.mlp_hidden=100"}),
                 "model.mlp_hidden = 100: the GPU model needs a multiple of 8");
  expect_refused(gpu_config({"model.vocab_size=250"}), "model.vocab_size = 250");
  expect_refused(gpu_config({"model.kv_heads=1", "model.head_dim=64", "model.width=260"}),
                 "model.width = 260");
  // MoBA's limits bind only where a layer runs MoBA.
  EXPECT_TRUE(supports(gpu_config({"attention.kind=full", "attention.block_size=96"}), "cuda").ok());
  EXPECT_TRUE(supports(gpu_config({"attention.full_attention_last_layers=4", "model.layers=4",
                                   "attention.top_k=17"}),
                       "cuda")
                  .ok());
  // Memory, on any device: a model that cannot fit is refused with the planner's figures.
  const Support huge = supports(gpu_config({"model.layers=1000000000"}), "cpu");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.text().find("the configuration needs at least"), std::string::npos);
  EXPECT_THROW(supports(gpu_config(), "tpu"), Error);
}

}  // namespace
}  // namespace moba::train
