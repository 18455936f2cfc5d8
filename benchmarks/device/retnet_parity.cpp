// retnet_parity: the numbers behind "the ARM build computes what the x86 build computes".
//
//   retnet_parity model.pte IDS N LOGITS.bin
//
// Feeds the comma-separated prompt IDS one token at a time through the runner-flavour program (the way
// ExecuTorch's LLM runner prefills), then N greedy tokens. Prints one JSON line with the greedy tokens and
// writes the float32 logits of every step ([len(IDS) + N, vocab], row-major) to LOGITS.bin, which
// `arm64_compare.py` compares across builds with the export gate's metrics.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

using executorch::extension::from_blob;
using executorch::extension::module::Module;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s model.pte IDS N LOGITS.bin\n", argv[0]);
    return 2;
  }
  std::vector<int64_t> ids;
  std::stringstream ss(argv[2]);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) ids.push_back(std::atoll(item.c_str()));
  }
  const int n_new = std::atoi(argv[3]);
  Module module(argv[1], Module::LoadMode::Mmap);
  if (module.load_method("forward") != executorch::runtime::Error::Ok || ids.empty()) {
    std::fprintf(stderr, "Error: could not load method forward from %s (or no prompt ids)\n", argv[1]);
    return 1;
  }
  FILE* out = std::fopen(argv[4], "wb");
  if (!out) {
    std::fprintf(stderr, "Error: cannot write %s\n", argv[4]);
    return 1;
  }
  int64_t token = 0, pos = 0;
  auto tokens = from_blob(&token, {1, 1}, executorch::aten::ScalarType::Long);
  auto input_pos = from_blob(&pos, {1}, executorch::aten::ScalarType::Long);
  std::vector<int64_t> generated;
  const int total = static_cast<int>(ids.size()) + n_new;
  for (pos = 0; pos < total; ++pos) {
    token = pos < static_cast<int64_t>(ids.size()) ? ids[pos] : generated.back();
    auto result = module.forward({tokens, input_pos});
    if (!result.ok()) {
      std::fprintf(stderr, "Error: forward failed at position %lld\n", static_cast<long long>(pos));
      return 1;
    }
    const auto& logits = result.get()[0].toTensor();
    const float* row = logits.const_data_ptr<float>();
    const auto vocab = logits.numel();
    std::fwrite(row, sizeof(float), vocab, out);
    if (pos >= static_cast<int64_t>(ids.size()) - 1 && pos < total - 1) {
      generated.push_back(std::max_element(row, row + vocab) - row);
    }
  }
  std::fclose(out);
  std::printf("{\"model\": \"%s\", \"prompt_tokens\": %zu, \"tokens\": [", argv[1], ids.size());
  for (size_t i = 0; i < generated.size(); ++i) std::printf("%s%lld", i ? ", " : "", static_cast<long long>(generated[i]));
  std::printf("]}\n");
  return 0;
}
