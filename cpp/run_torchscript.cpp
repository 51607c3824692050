// Run the lab's TorchScript ResNet-18 (C7's file) with LibTorch, on images Python wrote.
//
//     run_torchscript MODEL.pt IMAGES.f32 N LOGITS.f32
//
// IMAGES.f32 holds N normalised 3x32x32 images and LOGITS.f32 receives the N x 10 outputs,
// both raw float32 (float32_io.h). `python libtorch.py` prints the command that builds this
// against the torch Python uses; the lab's extra credit builds it, runs it and compares.
#include <torch/script.h>

#include <cstdlib>
#include <iostream>

#include "float32_io.h"

int main(int argc, char* argv[]) {
  if (argc != 5) {
    std::cerr << "usage: run_torchscript MODEL.pt IMAGES.f32 N LOGITS.f32\n";
    return 2;
  }
  try {
    torch::Tensor images = read_float32(argv[2], {std::atoll(argv[3]), 3, 32, 32});
    torch::jit::script::Module model = torch::jit::load(argv[1]);  // no Python class needed
    model.eval();
    torch::NoGradGuard no_grad;  // inference: no graph for a backward pass
    torch::Tensor logits = model.forward({images}).toTensor();  // (N, 10)
    write_float32(argv[4], logits);
    print_classes(logits);
  } catch (const std::exception& error) {
    std::cerr << "run_torchscript: error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
