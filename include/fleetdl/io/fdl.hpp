// fleetdl/io/fdl.hpp — the .fdl model file: write, verify, read.
//
// Layout (version 1, all integers little-endian):
//   magic     8 bytes  "FLEETDL" 0x1A
//   version   u32      1
//   flags     u32      0 (reserved)
//   length    u64      total file length in bytes, CRC included
//   arch      u32 byte count, then: input shape (3 x u32), top-level node
//             count (u32), each node as nn::write_node (kind u16, label,
//             config; composites nest their children)
//   metadata  u32 count, then (key, value) strings (u16 length + bytes)
//   tensors   u32 count, then per tensor: name string, dtype u8 (1 = f32,
//             2 = f64), flags u8 (bit 0: trainable), ndim u8, dims u32 x
//             ndim, raw little-endian values
//   crc32     u32      CRC-32 of every byte before it
//
// Reading treats the bytes as untrusted: size and version, then the CRC, then
// every count and dimension is checked against FLEETDL_MAX_* limits and
// against the bytes that remain BEFORE anything is allocated, so a file can
// never make the reader allocate more than its own size justifies. Tensors
// must match the architecture exactly (names, order, dims).
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/file.hpp"
#include "fleetdl/nn/model.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fleetdl::io {

inline constexpr std::uint8_t fdl_magic[8] = {'F', 'L', 'E', 'E', 'T', 'D', 'L', 0x1A};
inline constexpr std::uint32_t fdl_version = 1;
inline constexpr std::size_t fdl_header_bytes = 8 + 4 + 4 + 8;

enum class DType : std::uint8_t { f32 = 1, f64 = 2 };

using Metadata = std::vector<std::pair<std::string, std::string>>;

template <class S>
struct ModelFile {
  nn::Model<S> model;
  Metadata metadata;
  std::uint32_t version = fdl_version;
};

namespace detail {

/// encode_model, or why the model cannot be stored: a label or metadata
/// string over 65535 bytes (lengths are u16), or a value that is not finite
/// in `dtype` (decode_model rejects those).
template <class S>
Result<std::vector<std::uint8_t>> encode_checked(const nn::Model<S>& model, const Metadata& meta, DType dtype) {
  ByteWriter w;
  w.raw(fdl_magic, 8);
  w.u32(fdl_version);
  w.u32(0);
  const std::size_t len_at = w.size();
  w.u64(0);
  ByteWriter arch;
  arch.u32(static_cast<std::uint32_t>(model.input_shape().c));
  arch.u32(static_cast<std::uint32_t>(model.input_shape().h));
  arch.u32(static_cast<std::uint32_t>(model.input_shape().w));
  model.chain().save_config(arch);
  w.u32(static_cast<std::uint32_t>(arch.size()));
  w.raw(arch.bytes().data(), arch.size());
  if (arch.overflowed()) return make_error(Errc::invalid_argument, "a node label is longer than 65535 bytes");
  w.u32(static_cast<std::uint32_t>(meta.size()));
  for (const auto& [k, v] : meta) {
    if (k.size() > 0xFFFF || v.size() > 0xFFFF)
      return make_error(Errc::invalid_argument, "metadata '" + k.substr(0, 64) + "': key or value longer than 65535 bytes");
    w.str(k);
    w.str(v);
  }
  auto tensors = const_cast<nn::Model<S>&>(model).tensors();
  w.u32(static_cast<std::uint32_t>(tensors.size()));
  for (const auto& t : tensors) {
    w.str(t.name);
    w.u8(static_cast<std::uint8_t>(dtype));
    w.u8(t.trainable ? 1 : 0);
    w.u8(static_cast<std::uint8_t>(t.dims.size()));
    for (Index d : t.dims) w.u32(static_cast<std::uint32_t>(d));
    for (Index i = 0; i < t.size(); ++i) {
      const double v = static_cast<double>(t.data[i]);
      if (!std::isfinite(v) || (dtype == DType::f32 && std::fabs(v) > std::numeric_limits<float>::max()))
        return make_error(Errc::invalid_argument, "tensor '" + t.name + "' value " + std::to_string(i) +
                                                      " is not finite" + (dtype == DType::f32 ? " as f32" : ""));
      if (dtype == DType::f32)
        w.f32(static_cast<float>(v));
      else
        w.f64(v);
    }
  }
  w.patch_u64(len_at, static_cast<std::uint64_t>(w.size() + 4));
  const std::uint32_t crc = crc32(w.bytes().data(), w.size());
  w.u32(crc);
  return std::move(w).bytes();
}

}  // namespace detail

/// Serialise a model (weights stored as `dtype`). Precondition: labels and
/// metadata strings fit in 65535 bytes and every value is finite in `dtype`;
/// save_model reports a violation as an error instead.
template <class S>
std::vector<std::uint8_t> encode_model(const nn::Model<S>& model, const Metadata& meta = {}, DType dtype = DType::f32) {
  auto r = detail::encode_checked(model, meta, dtype);
  FLEETDL_ASSERT(r.ok(), "encode_model: a string over 65535 bytes or a non-finite value (see save_model)");
  return std::move(r).value();
}

namespace detail {

struct ArchLimits {
  std::size_t nodes = 0;  ///< nodes read so far (all depths)
};

template <class S>
Result<nn::NodePtr<S>> read_node(ByteReader& r, int depth, ArchLimits& lim, const std::string& where);

inline Error arch_error(const std::string& where, const std::string& what) {
  return make_error(Errc::corrupt, where + ": " + what);
}

inline std::string hex(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", static_cast<unsigned>(v));
  return buf;
}

/// A u32 dimension: ends the bytes (truncated) or exceeds FLEETDL_MAX_DIM.
enum class DimRead { ok, truncated, over_limit };
inline DimRead read_dim(ByteReader& r, Index& v) {
  std::uint32_t u = 0;
  if (!r.u32(u)) return DimRead::truncated;
  if (u > static_cast<std::uint64_t>(FLEETDL_MAX_DIM)) return DimRead::over_limit;
  v = static_cast<Index>(u);
  return DimRead::ok;
}

template <class S>
Result<nn::Sequential<S>> read_sequential(ByteReader& r, int depth, ArchLimits& lim, const std::string& where) {
  if (depth > FLEETDL_MAX_DEPTH)
    return make_error(Errc::limit_exceeded, where + ": composites nested deeper than FLEETDL_MAX_DEPTH (" +
                                                std::to_string(FLEETDL_MAX_DEPTH) + ")");
  std::uint32_t count = 0;
  if (!r.u32(count)) return make_error(Errc::truncated, where + ": architecture ends inside a node list");
  // every node record takes at least 4 bytes (kind + empty label)
  if (count > FLEETDL_MAX_NODES || lim.nodes + count > FLEETDL_MAX_NODES)
    return make_error(Errc::limit_exceeded, where + ": " + std::to_string(count) +
                                                " nodes exceed FLEETDL_MAX_NODES (" + std::to_string(FLEETDL_MAX_NODES) + ")");
  if (static_cast<std::size_t>(count) * 4 > r.remaining())
    return make_error(Errc::truncated, where + ": " + std::to_string(count) + " nodes announced, only " +
                                           std::to_string(r.remaining()) + " architecture bytes left");
  nn::Sequential<S> seq;
  for (std::uint32_t i = 0; i < count; ++i) {
    auto n = read_node<S>(r, depth, lim, where + "." + std::to_string(i));
    if (!n) return std::move(n).error();
    seq.add(std::move(*n));
  }
  return seq;
}

template <class S>
Result<nn::NodePtr<S>> read_node(ByteReader& r, int depth, ArchLimits& lim, const std::string& where) {
  using namespace fleetdl::nn;
  if (++lim.nodes > FLEETDL_MAX_NODES)
    return make_error(Errc::limit_exceeded, where + ": more than FLEETDL_MAX_NODES nodes");
  std::uint16_t kind = 0;
  std::string label;
  if (!r.u16(kind) || !r.str(label)) return make_error(Errc::truncated, where + ": architecture ends inside a node header");
  const auto trunc = [&](const char* t) { return make_error(Errc::truncated, where + ": architecture ends inside a " + std::string(t)); };
  const auto bad = [&](const std::string& t) { return arch_error(where, t); };
  Error dim_err;
  const auto dim = [&](Index& v, const char* t) {
    switch (read_dim(r, v)) {
      case DimRead::ok: return true;
      case DimRead::truncated: dim_err = trunc(t); return false;
      case DimRead::over_limit: break;
    }
    dim_err = make_error(Errc::limit_exceeded, where + ": " + std::string(t) + " has a dimension over FLEETDL_MAX_DIM (" +
                                                   std::to_string(FLEETDL_MAX_DIM) + ")");
    return false;
  };
  NodePtr<S> node;
  switch (static_cast<NodeKind>(kind)) {
    case NodeKind::dense: {
      Index in = 0, out = 0;
      std::uint8_t bias = 0;
      if (!dim(in, "dense config") || !dim(out, "dense config")) return dim_err;
      if (!r.u8(bias)) return trunc("dense config");
      if (bias > 1) return bad("dense bias flag " + std::to_string(bias) + " is not 0 or 1");
      node = std::make_unique<Dense<S>>(in, out, bias == 1);
      break;
    }
    case NodeKind::conv2d: {
      Conv2DOptions o;
      std::uint8_t bias = 0;
      Index* f[] = {&o.in_channels, &o.out_channels, &o.kernel_h, &o.kernel_w, &o.stride_h, &o.stride_w,
                    &o.pad_h, &o.pad_w, &o.dilation_h, &o.dilation_w, &o.groups};
      for (Index* p : f)
        if (!dim(*p, "conv2d config")) return dim_err;
      if (!r.u8(bias)) return trunc("conv2d config");
      if (bias > 1) return bad("conv2d bias flag " + std::to_string(bias) + " is not 0 or 1");
      o.bias = bias == 1;
      node = std::make_unique<Conv2D<S>>(o);
      break;
    }
    case NodeKind::maxpool2d:
    case NodeKind::avgpool2d: {
      Index k = 0, s = 0, p = 0;
      if (!dim(k, "pooling config") || !dim(s, "pooling config") || !dim(p, "pooling config")) return dim_err;
      if (s == 0) return bad("pooling stride 0");
      if (static_cast<NodeKind>(kind) == NodeKind::maxpool2d)
        node = std::make_unique<MaxPool2D<S>>(k, s, p);
      else
        node = std::make_unique<AvgPool2D<S>>(k, s, p);
      break;
    }
    case NodeKind::global_avg_pool: node = std::make_unique<GlobalAvgPool<S>>(); break;
    case NodeKind::batchnorm: {
      Index c = 0;
      double eps = 0, mom = 0;
      if (!dim(c, "batchnorm config")) return dim_err;
      if (!r.f64(eps) || !r.f64(mom)) return trunc("batchnorm config");
      if (!std::isfinite(eps) || !std::isfinite(mom)) return bad("batchnorm eps/momentum not finite");
      node = std::make_unique<BatchNorm<S>>(c, eps, mom);
      break;
    }
    case NodeKind::relu:
    case NodeKind::relu6:
    case NodeKind::sigmoid:
    case NodeKind::tanh: node = std::make_unique<Activation<S>>(static_cast<NodeKind>(kind)); break;
    case NodeKind::softmax: node = std::make_unique<Softmax<S>>(); break;
    case NodeKind::flatten: node = std::make_unique<Flatten<S>>(); break;
    case NodeKind::dropout: {
      double p = 0;
      if (!r.f64(p)) return trunc("dropout config");
      if (!(p >= 0.0 && p < 1.0)) return bad("dropout p not in [0, 1)");
      node = std::make_unique<Dropout<S>>(p);
      break;
    }
    case NodeKind::sequential: {
      auto s = read_sequential<S>(r, depth + 1, lim, where);
      if (!s) return std::move(s).error();
      node = std::make_unique<Sequential<S>>(std::move(*s));
      break;
    }
    case NodeKind::residual: {
      std::uint8_t has_proj = 0;
      if (!r.u8(has_proj)) return trunc("residual config");
      if (has_proj > 1) return bad("residual projection flag " + std::to_string(has_proj) + " is not 0 or 1");
      auto body = read_sequential<S>(r, depth + 1, lim, where + ".body");
      if (!body) return std::move(body).error();
      if (has_proj) {
        auto proj = read_sequential<S>(r, depth + 1, lim, where + ".proj");
        if (!proj) return std::move(proj).error();
        node = std::make_unique<Residual<S>>(std::move(*body), std::move(*proj));
      } else {
        node = std::make_unique<Residual<S>>(std::move(*body));
      }
      break;
    }
    case NodeKind::concat: {
      std::uint32_t nb = 0;
      if (!r.u32(nb)) return trunc("concat config");
      if (nb == 0 || nb > FLEETDL_MAX_NODES || static_cast<std::size_t>(nb) * 4 > r.remaining())
        return bad("concat branch count " + std::to_string(nb) + " invalid for the bytes left");
      // Branches are Sequential composites: they count against the node limit.
      if (lim.nodes + nb > FLEETDL_MAX_NODES)
        return make_error(Errc::limit_exceeded, where + ": " + std::to_string(nb) +
                                                    " concat branches exceed FLEETDL_MAX_NODES (" +
                                                    std::to_string(FLEETDL_MAX_NODES) + ")");
      lim.nodes += nb;
      auto c = std::make_unique<Concat<S>>();
      for (std::uint32_t i = 0; i < nb; ++i) {
        auto b = read_sequential<S>(r, depth + 1, lim, where + ".branch" + std::to_string(i));
        if (!b) return std::move(b).error();
        c->add(std::move(*b));
      }
      node = std::move(c);
      break;
    }
    default: return make_error(Errc::unsupported, where + ": unknown node kind " + std::to_string(kind));
  }
  node->label = std::move(label);
  return node;
}

template <class S>
bool read_value(ByteReader& r, DType dt, S& out) {
  if (dt == DType::f32) {
    float f = 0;
    if (!r.f32(f)) return false;
    out = static_cast<S>(f);
  } else {
    double d = 0;
    if (!r.f64(d)) return false;
    out = static_cast<S>(d);
  }
  return true;
}

}  // namespace detail

/// Verify and decode a model from untrusted bytes. `name` (a file name)
/// prefixes every error message.
template <class S>
Result<ModelFile<S>> decode_model(const std::uint8_t* data, std::size_t size, const std::string& name = "model") {
  const auto err = [&](Errc c, const std::string& m) { return make_error(c, name + ": " + m); };
  if (size > FLEETDL_MAX_MODEL_BYTES)
    return err(Errc::limit_exceeded, std::to_string(size) + " bytes exceed FLEETDL_MAX_MODEL_BYTES");
  if (size < 8 || std::memcmp(data, fdl_magic, 8) != 0)
    return err(Errc::bad_magic, "not a fleetdl model file (bad magic)");
  ByteReader r(data, size);
  r.take(8);
  std::uint32_t version = 0, flags = 0;
  std::uint64_t length = 0;
  if (!r.u32(version) || !r.u32(flags) || !r.u64(length))
    return err(Errc::truncated, "file ends inside the header (" + std::to_string(size) + " bytes)");
  if (version != fdl_version)
    return err(Errc::bad_version, "file version " + std::to_string(version) + ", this build reads version " +
                                      std::to_string(fdl_version));
  if (flags != 0) return err(Errc::unsupported, "unknown header flags " + detail::hex(flags));
  if (length > size)
    return err(Errc::truncated, "file is truncated: header says " + std::to_string(length) + " bytes, file has " + std::to_string(size));
  if (length < size)
    return err(Errc::corrupt, "header says " + std::to_string(length) + " bytes, file has " + std::to_string(size) +
                                  " (trailing bytes)");
  if (size < fdl_header_bytes + 4) return err(Errc::truncated, "file too short for a model");
  std::uint32_t stored = 0;
  {
    ByteReader c(data + size - 4, 4);
    c.u32(stored);
  }
  const std::uint32_t actual = crc32(data, size - 4);
  if (stored != actual) return err(Errc::checksum_mismatch, "CRC-32 mismatch (file is corrupted)");
  ByteReader body(data + fdl_header_bytes, size - fdl_header_bytes - 4);

  // architecture
  std::uint32_t arch_len = 0;
  if (!body.u32(arch_len)) return err(Errc::truncated, "file ends before the architecture");
  const std::uint8_t* arch = body.take(arch_len);
  if (!arch)
    return err(Errc::truncated, "architecture needs " + std::to_string(arch_len) + " bytes, file has " +
                                    std::to_string(body.remaining()) + " left");
  ByteReader ar(arch, arch_len);
  Shape in;
  for (Index* p : {&in.c, &in.h, &in.w}) {
    const auto d = detail::read_dim(ar, *p);
    if (d == detail::DimRead::truncated) return err(Errc::truncated, "architecture ends inside the input shape");
    if (d == detail::DimRead::over_limit)
      return err(Errc::limit_exceeded, "input shape has a dimension over FLEETDL_MAX_DIM (" +
                                           std::to_string(FLEETDL_MAX_DIM) + ")");
  }
  detail::ArchLimits lim;
  auto chain = detail::read_sequential<S>(ar, 0, lim, "architecture node");
  if (!chain) return err(chain.error().code, chain.error().message);
  if (!ar.at_end()) return err(Errc::corrupt, std::to_string(ar.remaining()) + " unread bytes after the architecture");
  auto shape = chain->build(in);
  if (!shape) return err(shape.error().code, "architecture invalid: " + shape.error().message);

  // metadata
  std::uint32_t nmeta = 0;
  if (!body.u32(nmeta)) return err(Errc::truncated, "file ends before the metadata");
  if (static_cast<std::size_t>(nmeta) * 4 > body.remaining())
    return err(Errc::truncated, std::to_string(nmeta) + " metadata entries announced, " +
                                    std::to_string(body.remaining()) + " bytes left");
  Metadata meta;
  for (std::uint32_t i = 0; i < nmeta; ++i) {
    std::string k, v;
    if (!body.str(k) || !body.str(v)) return err(Errc::truncated, "file ends inside metadata entry " + std::to_string(i));
    meta.emplace_back(std::move(k), std::move(v));
  }

  // parameters: the architecture must be justified by the bytes left
  const Index np = chain->param_count(), nb = chain->buffer_count();
  const std::size_t need = static_cast<std::size_t>(np + nb) * 4;  // at least f32 each
  if (need > body.remaining())
    return err(Errc::truncated, "architecture needs " + std::to_string(np + nb) + " values (" + std::to_string(need) +
                                    " bytes), file has " + std::to_string(body.remaining()) + " left");
  std::vector<nn::NodePtr<S>> nodes = std::move(chain->nodes());
  auto model = nn::Model<S>::create(in, std::move(nodes));
  if (!model) return err(model.error().code, model.error().message);
  auto expected = model->tensors();
  std::uint32_t nt = 0;
  if (!body.u32(nt)) return err(Errc::truncated, "file ends before the tensor table");
  if (nt != expected.size())
    return err(Errc::corrupt, std::to_string(nt) + " tensors stored, the architecture has " +
                                  std::to_string(expected.size()));
  for (std::uint32_t i = 0; i < nt; ++i) {
    const auto& t = expected[i];
    const std::string where = "tensor " + std::to_string(i) + " '" + t.name + "'";
    std::string tname;
    std::uint8_t dt = 0, tflags = 0, ndim = 0;
    if (!body.str(tname) || !body.u8(dt) || !body.u8(tflags) || !body.u8(ndim))
      return err(Errc::truncated, "file ends inside the header of " + where);
    if (tname != t.name) return err(Errc::corrupt, where + ": stored name is '" + tname + "'");
    if (dt != 1 && dt != 2) return err(Errc::unsupported, where + ": unknown dtype " + std::to_string(dt));
    if ((tflags & 1U) != (t.trainable ? 1U : 0U) || (tflags & ~1U) != 0)
      return err(Errc::corrupt, where + ": flags " + detail::hex(tflags) + " do not match the architecture");
    if (ndim != t.dims.size())
      return err(Errc::corrupt, where + ": " + std::to_string(ndim) + " dims stored, expected " + std::to_string(t.dims.size()));
    for (std::size_t d = 0; d < t.dims.size(); ++d) {
      std::uint32_t v = 0;
      if (!body.u32(v)) return err(Errc::truncated, "file ends inside the dims of " + where);
      if (static_cast<Index>(v) != t.dims[d])
        return err(Errc::corrupt, where + ": dim " + std::to_string(d) + " is " + std::to_string(v) + ", expected " +
                                      std::to_string(t.dims[d]));
    }
    const std::size_t bytes = static_cast<std::size_t>(t.size()) * (dt == 1 ? 4 : 8);
    if (bytes > body.remaining())
      return err(Errc::truncated, where + " needs " + std::to_string(bytes) + " bytes, file has " +
                                      std::to_string(body.remaining()) + " left");
    for (Index k = 0; k < t.size(); ++k) {
      S v{};
      detail::read_value(body, static_cast<DType>(dt), v);
      if (!std::isfinite(static_cast<double>(v)))
        return err(Errc::corrupt, where + ": value " + std::to_string(k) + " is not finite");
      t.data[k] = v;
    }
  }
  if (!body.at_end()) return err(Errc::corrupt, std::to_string(body.remaining()) + " unread bytes after the tensors");
  return ModelFile<S>{std::move(*model), std::move(meta), version};
}

/// Read a model file's bytes (fleetdl::read_file), refusing sizes over
/// `max_bytes` before reading. Every failure to open a model file, a missing
/// one included, is an io_error.
inline Result<std::vector<std::uint8_t>> read_file_bytes(const std::string& path,
                                                         std::uint64_t max_bytes = FLEETDL_MAX_MODEL_BYTES) {
  auto r = read_file(path, max_bytes);
  if (!r && r.error().code == Errc::not_found) return make_error(Errc::io_error, r.error().message);
  return r;
}

using fleetdl::write_file_atomic;

template <class S>
Result<void> save_model(const std::string& path, const nn::Model<S>& model, const Metadata& meta = {},
                        DType dtype = DType::f32) {
  auto bytes = detail::encode_checked(model, meta, dtype);
  if (!bytes) return make_error(bytes.error().code, path + ": " + bytes.error().message);
  return write_file_atomic(path, *bytes);
}

template <class S>
Result<ModelFile<S>> load_model(const std::string& path) {
  auto bytes = read_file_bytes(path);
  if (!bytes) return std::move(bytes).error();
  std::string base = path;
  return decode_model<S>(bytes->data(), bytes->size(), base);
}

}  // namespace fleetdl::io
