// fleetdl/nn/zoo.hpp — reference architectures by name: lenet5 (the
// foundation's reference CNN), cnn_niid (Flower niid_bench / Li et al. 2021:
// conv6-pool-conv16-pool-fc120-fc84-fc10), cnn1 (Sudharsan et al. 2022:
// conv12 3x3, maxpool 2, dense 10), lenet300_100 (Han et al. 2016) and
// vgg_fmnist (a VGG-style BatchNorm CNN, the NoNN teacher for Fashion-MNIST).
#pragma once

#include "fleetdl/nn/model.hpp"

#include <string_view>

namespace fleetdl::nn {

/// Nodes of a named architecture for 1x28x28 inputs and 10 classes.
template <class S>
Result<Model<S>> make_model(std::string_view name, const Shape& input = Shape{1, 28, 28}, Index classes = 10) {
  std::vector<NodePtr<S>> v;
  if (name == "lenet5") {
    // conv 5x5 1->16 pad 2, ReLU, maxpool 2; conv 5x5 16->32 pad 2, ReLU,
    // maxpool 2; dense 1568->128, ReLU; dense 128->10.
    v.push_back(std::make_unique<Conv2D<S>>(input.c, 16, 5, 1, 2));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<MaxPool2D<S>>(2));
    v.push_back(std::make_unique<Conv2D<S>>(16, 32, 5, 1, 2));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<MaxPool2D<S>>(2));
    v.push_back(std::make_unique<Flatten<S>>());
    v.push_back(std::make_unique<Dense<S>>(32 * (input.h / 4) * (input.w / 4), 128));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<Dense<S>>(128, classes));
  } else if (name == "cnn_niid") {
    v.push_back(std::make_unique<Conv2D<S>>(input.c, 6, 5));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<MaxPool2D<S>>(2));
    v.push_back(std::make_unique<Conv2D<S>>(6, 16, 5));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<MaxPool2D<S>>(2));
    v.push_back(std::make_unique<Flatten<S>>());
    v.push_back(std::make_unique<Dense<S>>(16 * ((input.h - 4) / 2 - 4) / 2 * (((input.w - 4) / 2 - 4) / 2), 120));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<Dense<S>>(120, 84));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<Dense<S>>(84, classes));
  } else if (name == "cnn1") {
    v.push_back(std::make_unique<Conv2D<S>>(input.c, 12, 3));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<MaxPool2D<S>>(2));
    v.push_back(std::make_unique<Flatten<S>>());
    v.push_back(std::make_unique<Dense<S>>(12 * ((input.h - 2) / 2) * ((input.w - 2) / 2), classes));
  } else if (name == "lenet300_100") {
    v.push_back(std::make_unique<Flatten<S>>());
    v.push_back(std::make_unique<Dense<S>>(input.size(), 300));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<Dense<S>>(300, 100));
    v.push_back(relu<S>());
    v.push_back(std::make_unique<Dense<S>>(100, classes));
  } else if (name == "vgg_fmnist") {
    // Three VGG blocks of two conv 3x3 pad 1 + BatchNorm + ReLU (32, 64, 128
    // channels), maxpool 2 after the first two; GlobalAvgPool, Flatten,
    // dense 128->10. The last block's pooled 128 channels are the teacher
    // features NoNN partitions (partition/nonn.hpp).
    const Index widths[] = {32, 32, 64, 64, 128, 128};
    Index cin = input.c;
    for (int i = 0; i < 6; ++i) {
      v.push_back(std::make_unique<Conv2D<S>>(cin, widths[i], 3, 1, 1));
      v.push_back(std::make_unique<BatchNorm<S>>(widths[i]));
      v.push_back(relu<S>());
      if (i == 1 || i == 3) v.push_back(std::make_unique<MaxPool2D<S>>(2));
      cin = widths[i];
    }
    v.push_back(std::make_unique<GlobalAvgPool<S>>());
    v.push_back(std::make_unique<Flatten<S>>());
    v.push_back(std::make_unique<Dense<S>>(cin, classes));
  } else {
    return make_error(Errc::not_found, "unknown model '" + std::string(name) +
                                           "' (known: lenet5, cnn_niid, cnn1, lenet300_100, vgg_fmnist)");
  }
  return Model<S>::create(input, std::move(v));
}

inline constexpr std::string_view model_names[] = {"lenet5", "cnn_niid", "cnn1", "lenet300_100",
                                                   "vgg_fmnist"};

}  // namespace fleetdl::nn
