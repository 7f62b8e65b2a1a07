// main() for a fuzz target built without libFuzzer: each argument is a file, or a directory whose
// files (at any depth) are read, and each input goes once through LLVMFuzzerTestOneInput, in sorted
// order. A missing argument is an error; an empty directory is not. Under a sanitizer this replays
// a corpus or a crash.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));

namespace {

void Run(const std::vector<char>& bytes) {
  // Exactly the input's size (never null), so that a sanitizer sees a read past the end.
  const auto data = std::make_unique<uint8_t[]>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), data.get());
  LLVMFuzzerTestOneInput(data.get(), bytes.size());
}

bool RunFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return false;
  }
  Run(std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  std::vector<std::filesystem::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(
               arg, std::filesystem::directory_options::follow_directory_symlink)) {
        if (!entry.is_directory()) inputs.push_back(entry.path());
      }
    } else if (std::filesystem::exists(arg, ec)) {
      inputs.push_back(arg);
    } else {
      std::fprintf(stderr, "no such file or directory: %s\n", argv[i]);
      return 1;
    }
  }
  std::sort(inputs.begin(), inputs.end());
  // Like libFuzzer, always try the empty input too.
  Run({});
  for (const auto& path : inputs) {
    if (!RunFile(path)) return 1;
  }
  std::fprintf(stderr, "ran %zu inputs\n", inputs.size() + 1);
  return 0;
}
