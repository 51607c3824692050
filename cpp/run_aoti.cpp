// Run the lab's ResNet-18 compiled ahead of time by AOTInductor, with LibTorch.
//
//     run_aoti PACKAGE.pt2 IMAGES.f32 N LOGITS.f32
//
// The package comes from torch._inductor.aoti_compile_and_package (torch.export's successor
// to a TorchScript file): it holds the compiled kernels and the weights, so nothing is
// compiled here. The files are as for run_torchscript.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdlib>
#include <iostream>

#include "float32_io.h"

int main(int argc, char* argv[]) {
  if (argc != 5) {
    std::cerr << "usage: run_aoti PACKAGE.pt2 IMAGES.f32 N LOGITS.f32\n";
    return 2;
  }
  try {
    torch::Tensor images = read_float32(argv[2], {std::atoll(argv[3]), 3, 32, 32});
    torch::inductor::AOTIModelPackageLoader model(argv[1]);
    torch::NoGradGuard no_grad;
    torch::Tensor logits = model.run({images})[0];  // (N, 10)
    write_float32(argv[4], logits);
    print_classes(logits);
  } catch (const std::exception& error) {
    std::cerr << "run_aoti: error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
