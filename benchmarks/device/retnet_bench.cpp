// retnet_bench: load a retnet-edge .pte (runner flavour), run N decode steps, print one JSON line.
//
//   retnet_bench model.pte [steps=128] [threads=0] [warmup=8]
//
// The runner-flavour program is forward(tokens int64[1,1], input_pos int64[1]) -> logits with the
// recurrent state in mutable buffers, exactly what ExecuTorch's LLM runner drives. Per-token cost must
// not grow with input_pos; the JSON reports the median of the first and the last quarter of steps.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s model.pte [steps=128] [threads=0] [warmup=8]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  const int steps = argc > 2 ? std::atoi(argv[2]) : 128;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 0;
  const int warmup = argc > 4 ? std::atoi(argv[4]) : 8;
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (threads > 0 && pool) pool->_unsafe_reset_threadpool(threads);

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
