// fleetdl/compress.hpp — the compression toolchain: magnitude and structured
// pruning with a gradual schedule (compress/prune.hpp), k-means weight sharing
// with centroid fine-tuning (compress/cluster.hpp), canonical Huffman coding
// (compress/huffman.hpp), the stored compressed-model format with exact byte
// accounting (compress/store.hpp) and int8 post-training quantization to a
// micro runtime blob (compress/quantize.hpp). Knowledge distillation is
// nn::kd_loss.
#pragma once

#include "fleetdl/compress/huffman.hpp"
#include "fleetdl/compress/prune.hpp"
#include "fleetdl/compress/quantize.hpp"
#include "fleetdl/compress/cluster.hpp"
#include "fleetdl/compress/store.hpp"
