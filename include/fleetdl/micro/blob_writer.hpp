// fleetdl/micro/blob_writer.hpp — HOST ONLY: builds micro model blobs
// (micro/blob.hpp) from a simple description. Uses std::vector; never include
// it in firmware (the device only needs blob/verifier/planner/interpreter).
//
//   BlobWriter w;
//   auto x = w.activation({1, 8, 8, 1}, 0.05f, -3);
//   auto k = w.constant_int8({4, 3, 3, 1}, 0.02f, weights);      // OHWI, zero point 0
//   auto b = w.constant_int32({1, 1, 1, 4}, bias);
//   auto y = w.activation({1, 6, 6, 4}, 0.1f, -128);
//   w.conv2d(x, k, b, kNoTensor, y, {.activation = Activation::relu});
//   w.inputs({x}); w.outputs({y});
//   std::vector<std::uint8_t> blob = w.finish();
//
// The writer checks nothing (tests build broken blobs with it on purpose):
// verify() is the gate. finish() lays the tables out as blob.hpp documents,
// puts constants in id order at 16-byte boundaries and appends the CRC-32.
// patch_crc() recomputes the CRC after a test edits bytes.
#pragma once

#include "fleetdl/compress/huffman.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/micro/blob.hpp"
#include "fleetdl/micro/weight_codec.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

namespace fleetdl::micro {

// Encode int8 weights (each in [-127, 127]) as micro/weight_codec.hpp's
// zero-run Huffman. The codebook is the distinct values (zero included only
// when the zero-run limit is 0), ascending; the zero-run limit r is the one of
// {0, 1, 2, 4, ..., 4096} that gives the fewest bytes (ties: the smaller r),
// runs are cut greedily into pieces of at most r; code lengths are Huffman's,
// limited to 15 bits (compress/huffman.hpp), canonical. Deterministic.
inline std::vector<std::uint8_t> encode_weights(const std::vector<std::int8_t>& values) {
  struct Plan {
    std::uint32_t r = 0;
    std::vector<std::int8_t> codebook;
    std::vector<std::uint32_t> symbols;
    std::vector<std::uint8_t> len;
    std::size_t bytes = 0;
  };
  const auto plan_for = [&](std::uint32_t r) {
    Plan p;
    p.r = r;
    bool present[256] = {};
    for (std::int8_t v : values)
      if (v != 0 || r == 0) present[static_cast<std::uint8_t>(v)] = true;
    std::int16_t index[256];
    for (int v = -128; v <= 127; ++v)
      if (present[static_cast<std::uint8_t>(v)]) {
        index[static_cast<std::uint8_t>(v)] = static_cast<std::int16_t>(p.codebook.size());
        p.codebook.push_back(static_cast<std::int8_t>(v));
      }
    const std::uint32_t k = static_cast<std::uint32_t>(p.codebook.size());
    std::size_t i = 0;
    while (i < values.size()) {
      if (values[i] != 0 || r == 0) {
        p.symbols.push_back(static_cast<std::uint32_t>(index[static_cast<std::uint8_t>(values[i])]));
        ++i;
        continue;
      }
      std::size_t run = 0;
      while (i + run < values.size() && values[i + run] == 0 && run < r) ++run;
      p.symbols.push_back(k + static_cast<std::uint32_t>(run) - 1);
      i += run;
    }
    std::vector<std::uint64_t> freq(k + r, 0);
    for (std::uint32_t sym : p.symbols) ++freq[sym];
    p.len = compress::huffman_code_lengths(freq, static_cast<int>(kMaxCodeBits));
    std::uint64_t bits = 0;
    std::uint32_t used = 0, max_len = 0;
    for (std::size_t sym = 0; sym < p.len.size(); ++sym) {
      bits += static_cast<std::uint64_t>(p.len[sym]) * freq[sym];
      if (p.len[sym]) {
        ++used;
        max_len = std::max<std::uint32_t>(max_len, p.len[sym]);
      }
    }
    p.bytes = kCodecHeaderBytes + 2 * max_len + 2 * used + k + static_cast<std::size_t>((bits + 7) / 8);
    return p;
  };
  FLEETDL_ASSERT(!values.empty(), "encode_weights: no values");
  for (std::int8_t v : values) FLEETDL_ASSERT(v != -128, "encode_weights: -128 is not a symmetric int8 weight");
  FLEETDL_ASSERT(values.size() <= 0xFFFFFFFFu, "encode_weights: more than 2^32 - 1 values");
  Plan best = plan_for(0);
  const bool any_zero = std::find(values.begin(), values.end(), std::int8_t{0}) != values.end();
  for (std::uint32_t r = 1; any_zero && r <= kMaxZeroRun; r *= 2) {
    Plan p = plan_for(r);
    if (p.bytes < best.bytes) best = std::move(p);
  }
  // Serialize: header, counts, symbols in canonical order, codebook, stream.
  std::uint32_t max_len = 0, used = 0;
  for (std::uint8_t l : best.len)
    if (l) {
      max_len = std::max<std::uint32_t>(max_len, l);
      ++used;
    }
  const std::uint32_t k = static_cast<std::uint32_t>(best.codebook.size());
  std::vector<std::uint8_t> out;
  const auto put16 = [&](std::uint32_t v) {
    out.push_back(static_cast<std::uint8_t>(v));
    out.push_back(static_cast<std::uint8_t>(v >> 8));
  };
  put16(k);
  put16(best.r);
  out.push_back(static_cast<std::uint8_t>(max_len));
  out.push_back(0);
  put16(used);
  for (int k8 = 0; k8 < 4; ++k8) out.push_back(static_cast<std::uint8_t>(values.size() >> (8 * k8)));
  for (std::uint32_t b = 1; b <= max_len; ++b)
    put16(static_cast<std::uint32_t>(std::count(best.len.begin(), best.len.end(), static_cast<std::uint8_t>(b))));
  for (std::uint32_t b = 1; b <= max_len; ++b)
    for (std::size_t sym = 0; sym < best.len.size(); ++sym)
      if (best.len[sym] == b) put16(static_cast<std::uint32_t>(sym));
  for (std::int8_t v : best.codebook) out.push_back(static_cast<std::uint8_t>(v));
  const std::vector<std::uint32_t> codes = compress::canonical_codes(best.len);
  compress::BitWriter bw;
  for (std::uint32_t sym : best.symbols) bw.put(codes[sym], best.len[sym]);
  const std::vector<std::uint8_t> stream = bw.finish();
  out.insert(out.end(), stream.begin(), stream.end());
  FLEETDL_ASSERT(out.size() == best.bytes, "encode_weights: size estimate disagrees with the bytes written");
  return out;
}

struct ConvOptions {
  Padding padding = Padding::valid;
  std::int32_t stride_h = 1;
  std::int32_t stride_w = 1;
  std::int32_t dilation_h = 1;
  std::int32_t dilation_w = 1;
  Activation activation = Activation::none;
};

struct PoolOptions {
  Padding padding = Padding::valid;
  std::int32_t filter_h = 2;
  std::int32_t filter_w = 2;
  std::int32_t stride_h = 2;
  std::int32_t stride_w = 2;
  Activation activation = Activation::none;
};

class BlobWriter {
 public:
  struct Tensor {
    TensorDesc desc;
    std::vector<std::uint8_t> data;  // constants: raw little-endian bytes
  };

  std::uint16_t activation(Shape4 shape, float scale, std::int32_t zero_point) {
    Tensor t;
    t.desc.shape = shape;
    t.desc.scale = scale;
    t.desc.zero_point = zero_point;
    t.desc.type = static_cast<std::uint8_t>(TensorType::int8);
    t.desc.kind = static_cast<std::uint8_t>(TensorKind::activation);
    return add_tensor(std::move(t));
  }
  std::uint16_t constant_int8(Shape4 shape, float scale, const std::vector<std::int8_t>& values) {
    return constant(shape, scale, TensorType::int8, values.data(), values.size());
  }
  // An int8 constant stored with the zero-run Huffman encoding (encode_weights).
  std::uint16_t constant_int8_encoded(Shape4 shape, float scale, const std::vector<std::int8_t>& values) {
    FLEETDL_ASSERT(values.size() == element_count(shape), "constant_int8_encoded: value count differs from the shape");
    return constant_int8_encoded_bytes(shape, scale, encode_weights(values));
  }
  // The same from bytes encode_weights() already produced (tests also pass
  // damaged ones: the writer checks nothing, verify() does).
  std::uint16_t constant_int8_encoded_bytes(Shape4 shape, float scale, const std::vector<std::uint8_t>& enc) {
    const std::uint16_t id = constant(shape, scale, TensorType::int8, enc.data(), enc.size());
    tensors_[id].desc.encoding = static_cast<std::uint16_t>(WeightEncoding::zero_run_huffman);
    return id;
  }
  std::uint16_t constant_int32(Shape4 shape, const std::vector<std::int32_t>& values) {
    return constant(shape, 1.0f, TensorType::int32, values.data(), values.size() * 4);
  }
  std::uint16_t constant_float(Shape4 shape, const std::vector<float>& values) {
    return constant(shape, 1.0f, TensorType::float32, values.data(), values.size() * 4);
  }

  // filter OHWI; bias {1,1,1,co} int32 or kNoTensor; scales {1,1,1,co} float or
  // kNoTensor (then the filter's own scale applies to every channel).
  void conv2d(std::uint16_t x, std::uint16_t filter, std::uint16_t bias, std::uint16_t scales, std::uint16_t y,
              const ConvOptions& o = {}) {
    op(conv_like(OpCode::conv2d, x, filter, bias, scales, y, o, 0));
  }
  void depthwise_conv2d(std::uint16_t x, std::uint16_t filter, std::uint16_t bias, std::uint16_t scales,
                        std::uint16_t y, std::int32_t depth_multiplier, const ConvOptions& o = {}) {
    op(conv_like(OpCode::depthwise_conv2d, x, filter, bias, scales, y, o, depth_multiplier));
  }
  void fully_connected(std::uint16_t x, std::uint16_t weights, std::uint16_t bias, std::uint16_t scales,
                       std::uint16_t y, Activation act = Activation::none) {
    ConvOptions o;
    o.activation = act;
    op(conv_like(OpCode::fully_connected, x, weights, bias, scales, y, o, 0));
  }
  void max_pool2d(std::uint16_t x, std::uint16_t y, const PoolOptions& o = {}) { op(pool(OpCode::max_pool2d, x, y, o)); }
  void average_pool2d(std::uint16_t x, std::uint16_t y, const PoolOptions& o = {}) {
    op(pool(OpCode::average_pool2d, x, y, o));
  }
  void global_average_pool2d(std::uint16_t x, std::uint16_t y, Activation act = Activation::none) {
    OpDesc d = base(OpCode::global_average_pool2d, y, {x});
    d.activation = static_cast<std::uint8_t>(act);
    op(d);
  }
  void add(std::uint16_t a, std::uint16_t b, std::uint16_t y, Activation act = Activation::none) {
    OpDesc d = base(OpCode::add, y, {a, b});
    d.activation = static_cast<std::uint8_t>(act);
    op(d);
  }
  void concatenation(std::initializer_list<std::uint16_t> xs, std::uint16_t y, std::int32_t axis = 3) {
    OpDesc d = base(OpCode::concatenation, y, xs);
    d.param = axis;
    op(d);
  }
  void reshape(std::uint16_t x, std::uint16_t y) { op(base(OpCode::reshape, y, {x})); }
  void softmax(std::uint16_t x, std::uint16_t y, float beta = 1.0f) {
    OpDesc d = base(OpCode::softmax, y, {x});
    d.param = static_cast<std::int32_t>(detail::f32_bits(beta));
    op(d);
  }

  // Raw access (tests): append any op record, edit any tensor record.
  void op(const OpDesc& d) { ops_.push_back(d); }
  Tensor& tensor(std::uint16_t id) { return tensors_.at(id); }
  OpDesc& op_at(std::size_t i) { return ops_.at(i); }
  std::size_t tensor_count() const { return tensors_.size(); }
  std::size_t op_count() const { return ops_.size(); }

  void inputs(std::initializer_list<std::uint16_t> ids) { inputs_.assign(ids.begin(), ids.end()); }
  void outputs(std::initializer_list<std::uint16_t> ids) { outputs_.assign(ids.begin(), ids.end()); }

  std::vector<std::uint8_t> finish() const {
    const std::uint64_t tables_end = kHeaderBytes + tensors_.size() * kTensorRecordBytes + ops_.size() * kOpRecordBytes +
                                     (inputs_.size() + outputs_.size()) * kIoEntryBytes;
    const std::uint64_t data_offset = detail::align_up(tables_end);
    std::vector<TensorDesc> descs;
    std::uint64_t cursor = data_offset;
    for (const Tensor& t : tensors_) {
      TensorDesc d = t.desc;
      if (d.is_constant()) {
        cursor = detail::align_up(cursor);
        d.data_offset = static_cast<std::uint32_t>(cursor);
        d.data_length = static_cast<std::uint32_t>(t.data.size());
        cursor += t.data.size();
      }
      descs.push_back(d);
    }
    std::vector<std::uint8_t> b(static_cast<std::size_t>(cursor + kCrcBytes), 0);
    std::memcpy(b.data(), kMagic, sizeof kMagic);
    put32(b, layout::kVersion, kFormatVersion);
    put64(b, layout::kLength, b.size());
    put32(b, layout::kTensorCount, static_cast<std::uint32_t>(tensors_.size()));
    put32(b, layout::kOpCount, static_cast<std::uint32_t>(ops_.size()));
    put32(b, layout::kInputCount, static_cast<std::uint32_t>(inputs_.size()));
    put32(b, layout::kOutputCount, static_cast<std::uint32_t>(outputs_.size()));
    put32(b, layout::kDataOffset, static_cast<std::uint32_t>(data_offset));
    std::size_t p = kHeaderBytes;
    for (std::size_t i = 0; i < descs.size(); ++i, p += kTensorRecordBytes) {
      const TensorDesc& d = descs[i];
      put32(b, p + 0, static_cast<std::uint32_t>(d.shape.n));
      put32(b, p + 4, static_cast<std::uint32_t>(d.shape.h));
      put32(b, p + 8, static_cast<std::uint32_t>(d.shape.w));
      put32(b, p + 12, static_cast<std::uint32_t>(d.shape.c));
      put32(b, p + layout::kTScale, detail::f32_bits(d.scale));
      put32(b, p + layout::kTZeroPoint, static_cast<std::uint32_t>(d.zero_point));
      b[p + layout::kTType] = d.type;
      b[p + layout::kTKind] = d.kind;
      put16(b, p + layout::kTEncoding, d.encoding);
      put32(b, p + layout::kTDataOffset, d.data_offset);
      put32(b, p + layout::kTDataLength, d.data_length);
      put32(b, p + layout::kTReserved32, d.reserved32);
      if (d.is_constant() && !tensors_[i].data.empty())
        std::memcpy(b.data() + d.data_offset, tensors_[i].data.data(), tensors_[i].data.size());
    }
    for (const OpDesc& o : ops_) {
      b[p + layout::kOCode] = o.code;
      b[p + layout::kOActivation] = o.activation;
      b[p + layout::kOPadding] = o.padding;
      b[p + layout::kONumInputs] = o.num_inputs;
      put32(b, p + layout::kOStrideH, static_cast<std::uint32_t>(o.stride_h));
      put32(b, p + layout::kOStrideW, static_cast<std::uint32_t>(o.stride_w));
      put32(b, p + layout::kOFilterH, static_cast<std::uint32_t>(o.filter_h));
      put32(b, p + layout::kOFilterW, static_cast<std::uint32_t>(o.filter_w));
      put32(b, p + layout::kODilationH, static_cast<std::uint32_t>(o.dilation_h));
      put32(b, p + layout::kODilationW, static_cast<std::uint32_t>(o.dilation_w));
      put32(b, p + layout::kOParam, static_cast<std::uint32_t>(o.param));
      put16(b, p + layout::kOOutput, o.output);
      put16(b, p + layout::kOReserved16, o.reserved16);
      for (std::size_t k = 0; k < kMaxOpInputs; ++k) put16(b, p + layout::kOInputs + 2 * k, o.inputs[k]);
      put32(b, p + layout::kOReserved32, o.reserved32);
      p += kOpRecordBytes;
    }
    for (std::uint16_t id : inputs_) put32(b, (p += 4) - 4, id);
    for (std::uint16_t id : outputs_) put32(b, (p += 4) - 4, id);
    patch_crc(b);
    return b;
  }

  // Recompute the trailing CRC-32 (after a test edited bytes).
  static void patch_crc(std::vector<std::uint8_t>& b) {
    if (b.size() < kCrcBytes) return;
    put32(b, b.size() - kCrcBytes, fleetdl::crc32(b.data(), b.size() - kCrcBytes));
  }
  static void put16(std::vector<std::uint8_t>& b, std::size_t at, std::uint16_t v) {
    b[at] = static_cast<std::uint8_t>(v);
    b[at + 1] = static_cast<std::uint8_t>(v >> 8);
  }
  static void put32(std::vector<std::uint8_t>& b, std::size_t at, std::uint32_t v) {
    for (int k = 0; k < 4; ++k) b[at + static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(v >> (8 * k));
  }
  static void put64(std::vector<std::uint8_t>& b, std::size_t at, std::uint64_t v) {
    for (int k = 0; k < 8; ++k) b[at + static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(v >> (8 * k));
  }

 private:
  std::uint16_t add_tensor(Tensor t) {
    tensors_.push_back(std::move(t));
    return static_cast<std::uint16_t>(tensors_.size() - 1);
  }
  std::uint16_t constant(Shape4 shape, float scale, TensorType type, const void* bytes, std::size_t n) {
    Tensor t;
    t.desc.shape = shape;
    t.desc.scale = scale;
    t.desc.type = static_cast<std::uint8_t>(type);
    t.desc.kind = static_cast<std::uint8_t>(TensorKind::constant);
    const auto* p = static_cast<const std::uint8_t*>(bytes);
    t.data.assign(p, p + n);  // host is little-endian (blob.hpp checks)
    return add_tensor(std::move(t));
  }
  static OpDesc base(OpCode code, std::uint16_t y, std::initializer_list<std::uint16_t> xs) {
    OpDesc d;
    d.code = static_cast<std::uint8_t>(code);
    d.output = y;
    d.num_inputs = static_cast<std::uint8_t>(xs.size());
    std::size_t k = 0;
    for (std::uint16_t x : xs)
      if (k < kMaxOpInputs) d.inputs[k++] = x;
    return d;
  }
  static OpDesc conv_like(OpCode code, std::uint16_t x, std::uint16_t f, std::uint16_t bias, std::uint16_t scales,
                          std::uint16_t y, const ConvOptions& o, std::int32_t param) {
    OpDesc d = base(code, y, {x, f, bias, scales});
    d.activation = static_cast<std::uint8_t>(o.activation);
    d.padding = static_cast<std::uint8_t>(o.padding);
    d.stride_h = o.stride_h;
    d.stride_w = o.stride_w;
    d.dilation_h = o.dilation_h;
    d.dilation_w = o.dilation_w;
    d.param = param;
    return d;
  }
  static OpDesc pool(OpCode code, std::uint16_t x, std::uint16_t y, const PoolOptions& o) {
    OpDesc d = base(code, y, {x});
    d.activation = static_cast<std::uint8_t>(o.activation);
    d.padding = static_cast<std::uint8_t>(o.padding);
    d.filter_h = o.filter_h;
    d.filter_w = o.filter_w;
    d.stride_h = o.stride_h;
    d.stride_w = o.stride_w;
    return d;
  }

  std::vector<Tensor> tensors_;
  std::vector<OpDesc> ops_;
  std::vector<std::uint16_t> inputs_;
  std::vector<std::uint16_t> outputs_;
};

}  // namespace fleetdl::micro
