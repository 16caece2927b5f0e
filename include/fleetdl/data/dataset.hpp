// fleetdl/data/dataset.hpp — labelled image datasets in batch-matrix form:
// Dataset<S> (one sample per column, pixels scaled to [0,1]), subset() and
// head(), make_dataset() from decoded IDX files, and load_fashion_mnist().
//
// Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) is read from the directory
// FLEETDL_FASHION_MNIST_DIR, where the Debian package dataset-fashion-mnist
// installs {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/data/idx.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// Directory load_fashion_mnist() reads by default (Debian's
// dataset-fashion-mnist package location). Override with
// -DFLEETDL_FASHION_MNIST_DIR="\"/path\"".
#ifndef FLEETDL_FASHION_MNIST_DIR
#  define FLEETDL_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"
#endif

namespace fleetdl::data {

/// Labelled samples. images has rows = shape.size() (C*H*W, channel-major as
/// in core/tensor.hpp) and one column per sample; pixel values are
/// byte/255, so in [0, 1]. labels[i] is the class of column i, < classes.
template <class S>
struct Dataset {
  Matrix<S> images;
  std::vector<std::uint8_t> labels;
  Shape shape;
  int classes = 0;

  Index size() const { return static_cast<Index>(labels.size()); }
  bool empty() const { return labels.empty(); }

  /// Samples at `indices`, in that order (repeats allowed). Every index must
  /// be in [0, size()): indices come from code (a partitioner), so an
  /// out-of-range one is a programmer error.
  Dataset subset(std::span<const Index> indices) const {
    Dataset out;
    out.shape = shape;
    out.classes = classes;
    out.images.resize(images.rows(), static_cast<Index>(indices.size()));
    out.labels.resize(indices.size());
    for (std::size_t j = 0; j < indices.size(); ++j) {
      const Index i = indices[j];
      FLEETDL_ASSERT(i >= 0 && i < size(), "Dataset::subset: index out of range");
      out.images.col(static_cast<Index>(j)) = images.col(i);
      out.labels[j] = labels[static_cast<std::size_t>(i)];
    }
    return out;
  }

  /// The first min(n, size()) samples. n must be >= 0.
  Dataset head(Index n) const {
    FLEETDL_ASSERT(n >= 0, "Dataset::head: negative count");
    const Index m = std::min(n, size());
    Dataset out;
    out.shape = shape;
    out.classes = classes;
    out.images = images.leftCols(m);
    out.labels.assign(labels.begin(), labels.begin() + m);
    return out;
  }

  /// Number of samples of each class (size classes).
  std::vector<Index> label_counts() const {
    std::vector<Index> counts(static_cast<std::size_t>(classes > 0 ? classes : 0), 0);
    for (const std::uint8_t l : labels)
      if (l < counts.size()) ++counts[l];
    return counts;
  }
};

/// Build a Dataset from an images IDX file (3 dims: count, rows, columns)
/// and a labels IDX file (1 dim: count). Checks that both have the same
/// count and every label is < classes. limit = -1 keeps all samples,
/// limit >= 0 keeps the first min(limit, count). The names prefix errors.
template <class S>
Result<Dataset<S>> make_dataset(const IdxArray& images, const IdxArray& labels, int classes,
                                std::string_view images_name, std::string_view labels_name, Index limit = -1) {
  const std::string in(images_name), ln(labels_name);
  if (classes < 1 || classes > 256)
    return make_error(Errc::invalid_argument,
                      "make_dataset: classes = " + std::to_string(classes) + " must be in [1, 256] (labels are bytes)");
  if (limit < -1)
    return make_error(Errc::invalid_argument, "make_dataset: limit = " + std::to_string(limit) + " must be -1 (all) or >= 0");
  if (images.dims.size() != 3)
    return make_error(Errc::shape_mismatch, in + ": expected an images file (3 dimensions, magic 0x00000803), got " +
                                                std::to_string(images.dims.size()) + " dimension(s) " + images.dims_str());
  if (labels.dims.size() != 1)
    return make_error(Errc::shape_mismatch, ln + ": expected a labels file (1 dimension, magic 0x00000801), got " +
                                                std::to_string(labels.dims.size()) + " dimensions " + labels.dims_str());
  if (images.count() != labels.count())
    return make_error(Errc::corrupt, in + " has " + std::to_string(images.count()) + " images but " + ln + " has " +
                                         std::to_string(labels.count()) + " labels");
  for (std::size_t i = 0; i < labels.data.size(); ++i)
    if (labels.data[i] >= classes)
      return make_error(Errc::corrupt, ln + ": label " + std::to_string(labels.data[i]) + " at index " +
                                           std::to_string(i) + " is not below the " + std::to_string(classes) +
                                           " classes");

  const Index total = static_cast<Index>(images.count());
  const Index n = limit < 0 ? total : std::min(limit, total);
  Dataset<S> ds;
  ds.shape = Shape{1, static_cast<Index>(images.dims[1]), static_cast<Index>(images.dims[2])};
  ds.classes = classes;
  const Index rows = ds.shape.size();
  // Division (not multiplication by 1/255) so each value is the correctly
  // rounded byte/255 in S.
  std::array<S, 256> scale{};
  for (int v = 0; v < 256; ++v) scale[static_cast<std::size_t>(v)] = static_cast<S>(v) / static_cast<S>(255);
  ds.images.resize(rows, n);
  // Column-major with one sample per column: image j's row-major H*W bytes
  // are exactly column j.
  S* dst = ds.images.data();
  const std::uint8_t* src = images.data.data();
  const std::size_t count = static_cast<std::size_t>(rows) * static_cast<std::size_t>(n);
  for (std::size_t i = 0; i < count; ++i) dst[i] = scale[src[i]];
  ds.labels.assign(labels.data.begin(), labels.data.begin() + n);
  return ds;
}

/// Read an images and a labels IDX file (plain or .gz) into a Dataset.
template <class S>
Result<Dataset<S>> load_idx_dataset(const std::string& images_path, const std::string& labels_path, int classes,
                                    Index limit = -1, const IdxLimits& limits = {}) {
  auto images = read_idx(images_path, limits);
  if (!images) return std::move(images).error();
  auto labels = read_idx(labels_path, limits);
  if (!labels) return std::move(labels).error();
  return make_dataset<S>(*images, *labels, classes, images_path, labels_path, limit);
}

/// The ten Fashion-MNIST class names, by label.
inline constexpr std::array<std::string_view, 10> fashion_mnist_classes = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

namespace detail {
/// read_idx(dir/base.gz), falling back to the uncompressed dir/base; a
/// missing file gets a hint on how to install the dataset.
/// `path` receives the file actually read.
inline Result<IdxArray> read_fashion_mnist_file(const std::string& dir, const std::string& base,
                                                const IdxLimits& limits, std::string& path) {
  std::string prefix = dir;
  if (!prefix.empty() && prefix.back() != '/') prefix += '/';
  const std::string gz = prefix + base + ".gz";
  path = gz;
  auto r = read_idx(gz, limits);
  if (r || r.error().code != Errc::not_found) return r;
  path = prefix + base;
  auto plain = read_idx(path, limits);
  if (plain || plain.error().code != Errc::not_found) return plain;
  return make_error(Errc::not_found,
                    gz + ": not found (nor " + base +
                        " uncompressed); install the Debian package dataset-fashion-mnist "
                        "(apt install dataset-fashion-mnist) or pass the directory that holds Fashion-MNIST");
}
}  // namespace detail

/// Fashion-MNIST: 28x28 grey images of 10 clothing classes, 60000 for
/// training (train = true) and 10000 for testing. Returns shape {1,28,28},
/// classes 10. limit = -1 loads all samples, otherwise the first `limit`.
template <class S>
Result<Dataset<S>> load_fashion_mnist(const std::string& dir = FLEETDL_FASHION_MNIST_DIR, bool train = true,
                                      Index limit = -1, const IdxLimits& limits = {}) {
  const std::string split = train ? "train" : "t10k";
  const std::string images_base = split + "-images-idx3-ubyte";
  const std::string labels_base = split + "-labels-idx1-ubyte";
  std::string images_name, labels_name;
  auto images = detail::read_fashion_mnist_file(dir, images_base, limits, images_name);
  if (!images) return std::move(images).error();
  auto labels = detail::read_fashion_mnist_file(dir, labels_base, limits, labels_name);
  if (!labels) return std::move(labels).error();
  if (images->dims.size() == 3 && (images->dims[1] != 28 || images->dims[2] != 28))
    return make_error(Errc::shape_mismatch, images_name + ": images are " + std::to_string(images->dims[1]) + "x" +
                                                std::to_string(images->dims[2]) + ", Fashion-MNIST has 28x28");
  return make_dataset<S>(*images, *labels, 10, images_name, labels_name, limit);
}

}  // namespace fleetdl::data
