// examples/split_lenet5.cpp — the library in one page: build lenet5, train it
// briefly on Fashion-MNIST, cut it at a split point into a "device" half and
// a "server" half, check the halves compose to the whole model, print what
// each half costs and how many bytes cross the cut, and save both as .fdl.
//
//   build/examples/split_lenet5 [split-point] [train-limit]
#include <fleetdl/fleetdl.hpp>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  using namespace fleetdl;
  const Index split = argc > 1 ? std::atol(argv[1]) : 6;
  const Index limit = argc > 2 ? std::atol(argv[2]) : 10000;

  auto train = data::load_fashion_mnist<float>(FLEETDL_FASHION_MNIST_DIR, true, limit);
  auto test = data::load_fashion_mnist<float>(FLEETDL_FASHION_MNIST_DIR, false, 2000);
  if (!train || !test) {
    std::fprintf(stderr, "%s\n", (!train ? train.error() : test.error()).message.c_str());
    return 1;
  }
  auto model = nn::make_model<float>("lenet5");
  if (!model) return 1;
  model->init(42);

  ThreadPool pool(2);
  nn::Adam<float> opt(nn::AdamOptions{});
  nn::TrainOptions to;
  to.epochs = 1;
  nn::train_classifier(*model, opt, train->images, train->labels, to, &pool);
  const auto full = nn::evaluate(*model, test->images, test->labels, 256, &pool);
  std::printf("lenet5: %lld params, test accuracy %.4f\n", static_cast<long long>(model->param_count()), full.accuracy);

  auto device = model->slice(0, split);
  auto server = model->slice(split, model->size());
  if (!device || !server) {
    std::fprintf(stderr, "%s\n", (!device ? device.error() : server.error()).message.c_str());
    return 1;
  }
  // Device half, then server half, on the same batch: identical logits.
  nn::ExecContext<float> ctx{&pool, false, nullptr};
  const Matrix<float> x = test->images.leftCols(8);
  const Matrix<float> cut = device->forward(x, ctx);
  const Matrix<float> logits = server->forward(cut, ctx);
  const Matrix<float> whole = model->forward(x, ctx);
  std::printf("split at node %lld: max |split - whole| = %g\n", static_cast<long long>(split),
              static_cast<double>((logits - whole).cwiseAbs().maxCoeff()));

  for (auto* part : {&*device, &*server}) {
    Index params = 0, macs = 0;
    for (const auto& c : part->cost_report()) {
      params += c.params;
      macs += c.macs;
    }
    std::printf("  %-6s %8lld params %10lld MACs/image\n", part == &*device ? "device" : "server",
                static_cast<long long>(params), static_cast<long long>(macs));
  }
  std::printf("  bytes sent per image across the cut: %lld\n",
              static_cast<long long>(device->output_shape().size() * static_cast<Index>(sizeof(float))));

  auto a = io::save_model("lenet5-device.fdl", *device);
  auto b = io::save_model("lenet5-server.fdl", *server);
  if (!a || !b) return 1;
  std::printf("saved lenet5-device.fdl and lenet5-server.fdl\n");
  return 0;
}
