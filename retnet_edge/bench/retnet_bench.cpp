// retnet_bench: load a retnet-edge .pte (runner flavour), run decode steps, print JSON lines.
//
//   retnet_bench model.pte [steps=128] [threads=0] [warmup=8] [contexts] [repeat=1] [prompt=512]
//
// The runner-flavour program is forward(tokens int64[1,1], input_pos int64[1]) -> logits with the
// recurrent state in mutable buffers, exactly what ExecuTorch's LLM runner drives. Per-token cost must
// not grow with input_pos. Without `contexts`: one JSON line with the median of the first and the last
// quarter of steps. With `contexts` (e.g. 0,512,2048): a header line with the time to first token of a
// `prompt`-token prompt (best of two), then per depth one line — the program is stepped from position 0 to that depth
// (timed as fill_ms: the runner flavour prefills token by token, as the stock LLM runner does with it),
// then `repeat` x `steps` timed steps; memory from /proc/self/status (`retnet-edge bench --runtime cpp`).
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// The wheel ships libexecutorch_threadpool.so but not threadpool.h: declare the two symbols we call.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::from_blob;
using executorch::extension::module::Module;
using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

static double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * (v.size() - 1))];
}

// VmRSS, RssAnon, RssFile, VmHWM in MiB (zeros where /proc is absent)
struct Mem {
  double rss = 0, anon = 0, file = 0, peak = 0;
};
static Mem memory() {
  Mem m;
  std::ifstream f("/proc/self/status");
  std::string key;
  double kb;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    if (!(is >> key >> kb)) continue;
    if (key == "VmRSS:") m.rss = kb / 1024;
    if (key == "RssAnon:") m.anon = kb / 1024;
    if (key == "RssFile:") m.file = kb / 1024;
    if (key == "VmHWM:") m.peak = kb / 1024;
  }
  return m;
}

static std::vector<long> parse_list(const char* s) {
  std::vector<long> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::atol(item.c_str()));
  }
  std::sort(out.begin(), out.end());
  return out;
}

static double median(std::vector<double> v) { return percentile(std::move(v), 0.5); }

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s model.pte [steps=128] [threads=0] [warmup=8] [contexts] [repeat=1] [prompt=512]\n",
                 argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  const int steps = argc > 2 ? std::atoi(argv[2]) : 128;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 0;
  const int warmup = argc > 4 ? std::atoi(argv[4]) : 8;
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (threads > 0 && pool) pool->_unsafe_reset_threadpool(threads);

  const Mem before = memory();
  auto t0 = Clock::now();
  Module module(path, Module::LoadMode::Mmap);
  if (module.load_method("forward") != executorch::runtime::Error::Ok) {
    std::fprintf(stderr, "Error: could not load method forward from %s\n", path.c_str());
    return 1;
  }
  const double load_ms = ms_since(t0);

  // tokens stay inside the model's vocabulary (the constant method the LLM runner reads)
  int64_t vocab = 1000;
  if (auto v = module.execute("get_vocab_size"); v.ok() && !v.get().empty() && v.get()[0].isInt()) {
    vocab = v.get()[0].toInt();
  }
  int64_t token = 1, pos = 0;
  auto tokens = from_blob(&token, {1, 1}, executorch::aten::ScalarType::Long);
  auto input_pos = from_blob(&pos, {1}, executorch::aten::ScalarType::Long);
  auto step = [&](int64_t p) {
    pos = p;
    token = 1 + (p * 7919) % (vocab - 1);  // deterministic token stream
    return module.forward({tokens, input_pos}).ok();
  };
  if (argc > 5) {  // the context sweep of `retnet-edge bench`
    const std::vector<long> contexts = parse_list(argv[5]);
    const int repeat = argc > 6 ? std::max(1, std::atoi(argv[6])) : 1;
    const int prompt = argc > 7 ? std::max(1, std::atoi(argv[7])) : 512;
    const Mem loaded = memory();
    // fill positions [0, n) as the stock runner prefills (token by token); its time in ms. A RetNet step
    // costs the same at every position and whatever the state holds, so a refill from 0 times a prompt.
    auto fill = [&](int64_t n, double* ms) {
      auto ts = Clock::now();
      for (int64_t q = 0; q < n; ++q) {
        if (!step(q)) return std::fprintf(stderr, "Error: forward failed at position %lld\n", (long long)q), false;
      }
      *ms = ms_since(ts);
      return true;
    };
    double ttft_ms = 0, again = 0;  // the best of two, as measure.py's prompt_seconds (the first also warms up)
    if (!fill(prompt, &ttft_ms) || !fill(prompt, &again)) return 1;
    ttft_ms = std::min(ttft_ms, again);
    std::printf("{\"load_ms\": %.2f, \"rss_before_load_mib\": %.1f, \"rss_mib\": %.1f, \"threads\": %zu, "
                "\"prompt_tokens\": %d, \"ttft_ms\": %.2f}\n",
                load_ms, before.rss, loaded.rss, pool ? pool->get_thread_count() : 0, prompt, ttft_ms);
    int64_t p = 0;
    for (long ctx : contexts) {
      double fill_ms = 0;
      if (ctx > 0 && !fill(ctx, &fill_ms)) return 1;
      p = ctx;
      const int64_t start = p;
      step(p++);  // warm-up token
      std::vector<double> all, medians;
      for (int r = 0; r < repeat; ++r) {  // the state lives in the program: repetitions run on
        std::vector<double> run;
        for (int i = 0; i < steps; ++i, ++p) {
          auto ts = Clock::now();
          if (!step(p)) return std::fprintf(stderr, "Error: forward failed at position %lld\n", (long long)p), 1;
          run.push_back(ms_since(ts));
        }
        medians.push_back(median(run));
        all.insert(all.end(), run.begin(), run.end());
      }
      const Mem m = memory();
      const double mid = median(medians);
      std::printf("{\"context\": %ld, \"positions\": [%lld, %lld], \"restored_each_repeat\": false, "
                  "\"ms_per_token_median\": %.4f, \"ms_per_token_p90\": %.4f, \"spread\": %.4f, \"fill_ms\": %.2f, "
                  "\"rss_mib\": %.1f, \"anon_mib\": %.1f, \"file_mib\": %.1f, \"peak_mib\": %.1f}\n",
                  ctx, (long long)start, (long long)p, median(all), percentile(all, 0.9),
                  (*std::max_element(medians.begin(), medians.end()) - *std::min_element(medians.begin(), medians.end())) / mid,
                  fill_ms, m.rss, m.anon, m.file, m.peak);
    }
    return 0;
  }
  std::vector<double> times;
  for (int i = 0; i < warmup + steps; ++i) {
    pos = i;
    token = 1 + (i * 7919) % (vocab - 1);  // deterministic token stream
    auto ts = Clock::now();
    auto out = module.forward({tokens, input_pos});
    const double dt = ms_since(ts);
    if (!out.ok()) {
      std::fprintf(stderr, "Error: forward failed at step %d\n", i);
      return 1;
    }
    if (i >= warmup) times.push_back(dt);
  }
  const size_t q = std::max<size_t>(1, times.size() / 4);
  std::vector<double> first(times.begin(), times.begin() + q), last(times.end() - q, times.end());
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "{\"model\": \"%s\", \"load_ms\": %.2f, \"steps\": %d, \"threads\": %zu, \"median_ms\": %.4f, "
      "\"p90_ms\": %.4f, \"first_quarter_median_ms\": %.4f, \"last_quarter_median_ms\": %.4f, "
      "\"peak_rss_mib\": %.1f}\n",
      path.c_str(), load_ms, steps, pool ? pool->get_thread_count() : 0, percentile(times, 0.5),
      percentile(times, 0.9), percentile(first, 0.5), percentile(last, 0.5), ru.ru_maxrss / 1024.0);
  return 0;
}
