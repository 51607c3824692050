// The lab's C++ programs exchange tensors with Python as raw float32 files, the simplest
// format there is: the numbers in row-major order and nothing else. Python writes one with
// tensor.numpy().tofile(path) and reads one with torch.from_file(path, size=n).
#pragma once

#include <torch/script.h>

#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

// A float32 tensor of `sizes` read from `path`; throws when the file holds fewer numbers.
inline torch::Tensor read_float32(const std::string& path, const std::vector<int64_t>& sizes) {
  torch::Tensor tensor = torch::empty(sizes, torch::kFloat32);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(tensor.data_ptr<float>()), tensor.numel() * sizeof(float));
  if (!in) {
    throw std::runtime_error("cannot read " + std::to_string(tensor.numel()) +
                             " float32 numbers from " + path);
  }
  return tensor;
}

// `tensor` written to `path` as float32 in row-major order; throws when it cannot be.
inline void write_float32(const std::string& path, const torch::Tensor& tensor) {
  torch::Tensor data = tensor.to(torch::kCPU, torch::kFloat32).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data_ptr<float>()), data.numel() * sizeof(float));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// The predicted class of each image, the index of its largest logit, on one line.
inline void print_classes(const torch::Tensor& logits) {  // (N, 10)
  std::cout << "predicted classes:";
  for (int64_t i = 0; i < logits.size(0); ++i) {
    std::cout << " " << logits[i].argmax().item<int64_t>();
  }
  std::cout << "\n";
}
