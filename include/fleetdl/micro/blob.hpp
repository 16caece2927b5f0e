// fleetdl/micro/blob.hpp — the micro runtime's model blob: its byte layout,
// limits, error codes and a read-only view (ModelView) that decodes records
// on demand. Freestanding: no heap, no exceptions, no RTTI; the same bytes are
// read on the host and from a `alignas(16) const std::uint8_t model[]` array
// in firmware flash. Build blobs with micro/blob_writer.hpp (host only) and
// check them with micro/verifier.hpp before anything else touches them: the
// accessors here do NO bounds checks of their own.
//
// Byte layout, version 2. All integers little-endian, floats IEEE-754
// binary32 little-endian. Offsets are from the first byte of the blob.
//
//   Header (kHeaderBytes = 64)
//     0  u8[8]  magic "FDLMICRO"
//     8  u32    format version (kFormatVersion = 2; version 1 had no weight
//               encodings and is not read)
//    12  u32    flags, must be 0
//    16  u64    total length in bytes, CRC included; must equal the size given
//    24  u32    T  tensor count   1 .. kMaxTensors
//    28  u32    O  op count       1 .. kMaxOps
//    32  u32    I  model inputs   1 .. kMaxModelIO
//    36  u32    Q  model outputs  1 .. kMaxModelIO
//    40  u32    data offset D: start of the constant data section; 16-aligned,
//               >= end of the I/O table, <= length - 4
//    44  u32[5] reserved, must be 0
//   Tensor table at 64: T records of kTensorRecordBytes = 40, record i is tensor id i
//     0  i32[4] shape n, h, w, c (NHWC; every dim >= 1, element count <= INT32_MAX)
//    16  f32    scale
//    20  i32    zero point
//    24  u8     element type: 0 int8, 1 int32, 2 float32
//    25  u8     kind: 0 activation (lives in the arena), 1 constant (lives in the blob)
//    26  u16    encoding (WeightEncoding, micro/weight_codec.hpp): 0 raw; 1 zero-run
//               Huffman, only for an int8 constant used as the filter of conv2d or
//               fully_connected
//    28  u32    constant data offset (16-aligned, inside [D, length - 4)); 0 for activations
//    32  u32    constant data length: raw, element count * element size; encoded,
//               the encoded byte count; 0 for activations
//    36  u32    reserved, 0
//   Op table at 64 + 40 T: O records of kOpRecordBytes = 56, in execution order
//     0  u8     op code (OpCode)
//     1  u8     fused activation (quant.hpp Activation: 0 none, 1 relu, 2 relu_n1_to_1, 3 relu6)
//     2  u8     padding (kernels.hpp Padding: 0 same, 1 valid)
//     3  u8     number of inputs used, 1 .. kMaxOpInputs
//     4  i32    stride_h       (conv, depthwise, pools)
//     8  i32    stride_w
//    12  i32    filter_h       (max / average pool)
//    16  i32    filter_w
//    20  i32    dilation_h     (conv, depthwise)
//    24  i32    dilation_w
//    28  i32    param: depthwise depth multiplier; concatenation axis (0..3 of
//               NHWC); softmax beta as f32 bits; otherwise 0
//    32  u16    output tensor id
//    34  u16    reserved, 0
//    36  u16[8] input tensor ids; slots >= the input count hold kNoTensor (0xFFFF)
//    52  u32    reserved, 0
//   I/O table at 64 + 40 T + 56 O: I u32 input tensor ids, then Q u32 output ids
//   (padding up to D; not read)
//   Constant data section [D, length - 4): the data of constant tensors in
//   ascending tensor-id order, each 16-aligned, none overlapping
//   CRC-32 (IEEE, as core/crc32.hpp) of bytes [0, length - 4), u32 at length - 4
//
// Op inputs (slot: what), all activations int8:
//   conv2d            0 x {n,h,w,ci}; 1 filter int8 const OHWI {co,kh,kw,ci}, zero point 0;
//                     2 bias int32 const {1,1,1,co} or kNoTensor;
//                     3 per-channel filter scales f32 const {1,1,1,co}, or kNoTensor to
//                       use the filter tensor's own scale for every channel
//                     output {n, out_h, out_w, co}
//   depthwise_conv2d  as conv2d with filter {1,kh,kw,ci*m}, m = param; output c = ci*m
//   fully_connected   0 x {n,h,w,c} read as n rows of h*w*c; 1 weights {co,1,1,h*w*c};
//                     2 bias, 3 scales as conv2d; output {n,1,1,co}
//   max_pool2d, average_pool2d   0 x; output {n,out_h,out_w,c}, same scale and zero point
//   global_average_pool2d        0 x; output {n,1,1,c}, same scale and zero point
//   add               0 a, 1 b, output: all three the same shape (no broadcast)
//   concatenation     0 .. k-1 inputs joined along `param`; all dims but the axis equal;
//                     every input has the output's scale and zero point
//   reshape           0 x; same element count, scale and zero point
//   softmax           0 x; over the last axis; output shape = input shape, scale 1/256,
//                     zero point -128; beta = param as f32
//
// Requantization multipliers are NOT stored: as TFLite Micro does at Prepare,
// they are computed from the scales (quant.hpp quantize_multiplier of
// conv_effective_scale) — by the verifier to check them, and by the
// interpreter into the arena's persistent tail. One source of truth, no
// chance of a multiplier disagreeing with the scales it claims to encode.
//
// Alignment: int32 bias data is read in place, so the blob itself must start
// at a 16-byte boundary (the verifier refuses it otherwise) and the host must
// be little-endian (checked at compile time).
#pragma once

#include "fleetdl/core/crc32.hpp"
#include "fleetdl/micro/kernels.hpp"
#include "fleetdl/micro/quant.hpp"
#include "fleetdl/micro/weight_codec.hpp"

#include <cstddef>
#include <cstdint>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#  error "fleetdl::micro reads int32 constants in place from little-endian blobs: big-endian targets are not supported"
#endif

namespace fleetdl::micro {

// ---------------------------------------------------------------------------
// Layout constants and limits.

inline constexpr char kMagic[8] = {'F', 'D', 'L', 'M', 'I', 'C', 'R', 'O'};
inline constexpr std::uint32_t kFormatVersion = 2;
inline constexpr std::size_t kHeaderBytes = 64;
inline constexpr std::size_t kTensorRecordBytes = 40;
inline constexpr std::size_t kOpRecordBytes = 56;
inline constexpr std::size_t kIoEntryBytes = 4;
inline constexpr std::size_t kCrcBytes = 4;
inline constexpr std::size_t kAlignment = 16;  // arena, blob, constant data, arena offsets

// Limits, checked by the verifier before any loop depends on them.
inline constexpr std::uint32_t kMaxTensors = 1024;
inline constexpr std::uint32_t kMaxOps = 1024;
inline constexpr std::uint32_t kMaxModelIO = 16;
inline constexpr std::uint32_t kMaxOpInputs = 8;
// Sum of all activation tensors (each rounded up to 16 bytes): bounds every
// arena offset the planner can produce, so none of its sums can overflow.
inline constexpr std::uint64_t kMaxActivationBytes = std::uint64_t{1} << 30;
inline constexpr std::uint16_t kNoTensor = 0xFFFF;

// Header field offsets (the tests patch fields through these).
namespace layout {
inline constexpr std::size_t kVersion = 8;
inline constexpr std::size_t kFlags = 12;
inline constexpr std::size_t kLength = 16;
inline constexpr std::size_t kTensorCount = 24;
inline constexpr std::size_t kOpCount = 28;
inline constexpr std::size_t kInputCount = 32;
inline constexpr std::size_t kOutputCount = 36;
inline constexpr std::size_t kDataOffset = 40;
inline constexpr std::size_t kReserved = 44;
// Within a tensor record.
inline constexpr std::size_t kTShape = 0;
inline constexpr std::size_t kTScale = 16;
inline constexpr std::size_t kTZeroPoint = 20;
inline constexpr std::size_t kTType = 24;
inline constexpr std::size_t kTKind = 25;
inline constexpr std::size_t kTEncoding = 26;
inline constexpr std::size_t kTDataOffset = 28;
inline constexpr std::size_t kTDataLength = 32;
inline constexpr std::size_t kTReserved32 = 36;
// Within an op record.
inline constexpr std::size_t kOCode = 0;
inline constexpr std::size_t kOActivation = 1;
inline constexpr std::size_t kOPadding = 2;
inline constexpr std::size_t kONumInputs = 3;
inline constexpr std::size_t kOStrideH = 4;
inline constexpr std::size_t kOStrideW = 8;
inline constexpr std::size_t kOFilterH = 12;
inline constexpr std::size_t kOFilterW = 16;
inline constexpr std::size_t kODilationH = 20;
inline constexpr std::size_t kODilationW = 24;
inline constexpr std::size_t kOParam = 28;
inline constexpr std::size_t kOOutput = 32;
inline constexpr std::size_t kOReserved16 = 34;
inline constexpr std::size_t kOInputs = 36;
inline constexpr std::size_t kOReserved32 = 52;
}  // namespace layout

enum class TensorType : std::uint8_t { int8 = 0, int32 = 1, float32 = 2 };
enum class TensorKind : std::uint8_t { activation = 0, constant = 1 };

enum class OpCode : std::uint8_t {
  conv2d = 1,
  depthwise_conv2d = 2,
  fully_connected = 3,
  max_pool2d = 4,
  average_pool2d = 5,
  global_average_pool2d = 6,
  add = 7,
  concatenation = 8,
  reshape = 9,
  softmax = 10,
};

constexpr const char* op_name(std::uint8_t code) noexcept {
  switch (code) {
    case 1: return "conv2d";
    case 2: return "depthwise_conv2d";
    case 3: return "fully_connected";
    case 4: return "max_pool2d";
    case 5: return "average_pool2d";
    case 6: return "global_average_pool2d";
    case 7: return "add";
    case 8: return "concatenation";
    case 9: return "reshape";
    case 10: return "softmax";
    default: return "unknown op";
  }
}

constexpr std::size_t element_size(TensorType t) noexcept { return t == TensorType::int8 ? 1 : 4; }

// ---------------------------------------------------------------------------
// Error codes shared by the verifier, the planner and the interpreter. The
// index that comes with a code names the tensor, op or I/O slot at fault.

enum class ErrorCode : std::uint8_t {
  ok = 0,
  null_blob,              // blob pointer is null
  blob_misaligned,        // blob does not start at a 16-byte boundary
  truncated,              // fewer bytes than header + CRC, or than the tables need
  bad_magic,              // not "FDLMICRO"
  bad_version,            // a format version this build does not read
  bad_length,             // length field != size given
  bad_checksum,           // CRC-32 mismatch
  reserved_not_zero,      // a reserved field or the flags are not 0
  bad_counts,             // tensor / op / I/O count 0 or above its limit
  bad_data_offset,        // data section offset misaligned or outside the blob
  bad_tensor,             // type, kind or record fields of a tensor invalid
  bad_shape,              // a dim < 1 or element count > INT32_MAX
  bad_quantization,       // scale not finite > 0, zero point out of range
  bad_constant_data,      // constant data misaligned, out of bounds, wrong length, overlapping
  bad_encoding,           // unknown weight encoding, encoding on a tensor that cannot have one, or an encoded stream that does not decode to the tensor
  too_many_activation_bytes,  // activations exceed kMaxActivationBytes
  bad_io,                 // model input / output id invalid, not an activation, repeated
  bad_op_code,            // unknown op code
  bad_op_inputs,          // wrong number of inputs, wrong kind / type of an input
  tensor_out_of_range,    // an op refers to a tensor id >= T
  use_before_definition,  // an op reads an activation no earlier op (nor the model input) wrote
  redefinition,           // an activation written twice, or a model input written by an op
  undefined_tensor,       // an activation nobody writes (and not a model input)
  shape_mismatch,         // shapes inconsistent with the op
  bad_op_params,          // stride, padding, window, axis, depth multiplier invalid
  bad_activation,         // fused activation unknown or not allowed for the op
  bad_multiplier,         // a requantization multiplier cannot be represented
  bad_softmax,            // softmax output quantization or beta invalid
  arena_null,             // arena pointer is null
  arena_misaligned,       // arena does not start at a 16-byte boundary
  arena_too_small,        // arena smaller than the plan
  not_initialized,        // invoke() on an interpreter that init() did not return
  kernel_failed,          // a kernel refused its arguments (cannot happen after verify)
};

constexpr const char* describe(ErrorCode c) noexcept {
  switch (c) {
    case ErrorCode::ok: return "ok";
    case ErrorCode::null_blob: return "blob pointer is null";
    case ErrorCode::blob_misaligned: return "blob does not start at a 16-byte boundary";
    case ErrorCode::truncated: return "blob is truncated";
    case ErrorCode::bad_magic: return "not a micro model blob (magic is not FDLMICRO)";
    case ErrorCode::bad_version: return "unsupported blob format version";
    case ErrorCode::bad_length: return "length field does not match the blob size";
    case ErrorCode::bad_checksum: return "CRC-32 mismatch: the blob is corrupted";
    case ErrorCode::reserved_not_zero: return "a reserved field is not zero";
    case ErrorCode::bad_counts: return "tensor, op or I/O count is zero or above its limit";
    case ErrorCode::bad_data_offset: return "data section offset is misaligned or out of bounds";
    case ErrorCode::bad_tensor: return "tensor record is invalid";
    case ErrorCode::bad_shape: return "tensor shape is invalid";
    case ErrorCode::bad_quantization: return "tensor scale or zero point is invalid";
    case ErrorCode::bad_constant_data: return "constant data is misaligned, out of bounds, overlapping or of the wrong length";
    case ErrorCode::bad_encoding: return "encoded weights are invalid";
    case ErrorCode::too_many_activation_bytes: return "activations exceed the arena limit of 1 GiB";
    case ErrorCode::bad_io: return "model input or output is invalid";
    case ErrorCode::bad_op_code: return "unknown op code";
    case ErrorCode::bad_op_inputs: return "op inputs are missing or of the wrong kind";
    case ErrorCode::tensor_out_of_range: return "op refers to a tensor that does not exist";
    case ErrorCode::use_before_definition: return "op reads a tensor before any op writes it";
    case ErrorCode::redefinition: return "tensor is written twice or is a model input written by an op";
    case ErrorCode::undefined_tensor: return "activation tensor is never written";
    case ErrorCode::shape_mismatch: return "tensor shapes are inconsistent with the op";
    case ErrorCode::bad_op_params: return "op parameters are invalid";
    case ErrorCode::bad_activation: return "fused activation is invalid";
    case ErrorCode::bad_multiplier: return "requantization multiplier out of range";
    case ErrorCode::bad_softmax: return "softmax quantization or beta is invalid";
    case ErrorCode::arena_null: return "arena pointer is null";
    case ErrorCode::arena_misaligned: return "arena does not start at a 16-byte boundary";
    case ErrorCode::arena_too_small: return "arena too small";
    case ErrorCode::not_initialized: return "interpreter not initialized";
    case ErrorCode::kernel_failed: return "kernel refused its arguments";
  }
  return "unknown error";
}

// ---------------------------------------------------------------------------
// Little-endian loads from unaligned bytes (no aliasing, no alignment needs);
// load_u16 and load_u32 are micro/weight_codec.hpp's.

namespace detail {
constexpr std::uint64_t load_u64(const std::uint8_t* p) noexcept {
  return static_cast<std::uint64_t>(load_u32(p)) | (static_cast<std::uint64_t>(load_u32(p + 4)) << 32);
}
constexpr std::int32_t load_i32(const std::uint8_t* p) noexcept { return static_cast<std::int32_t>(load_u32(p)); }
inline float load_f32(const std::uint8_t* p) noexcept {
  const std::uint32_t u = load_u32(p);
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
inline float f32_from_bits(std::uint32_t u) noexcept {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
inline std::uint32_t f32_bits(float f) noexcept {
  std::uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a = kAlignment) noexcept {
  return (v + a - 1) / a * a;
}
}  // namespace detail

// ---------------------------------------------------------------------------
// Decoded records.

struct TensorDesc {
  Shape4 shape;
  float scale = 0.0f;
  std::int32_t zero_point = 0;
  std::uint8_t type = 0;  // TensorType
  std::uint8_t kind = 0;  // TensorKind
  std::uint16_t encoding = 0;  // WeightEncoding
  std::uint32_t data_offset = 0;
  std::uint32_t data_length = 0;
  std::uint32_t reserved32 = 0;

  bool is_activation() const noexcept { return kind == static_cast<std::uint8_t>(TensorKind::activation); }
  bool is_constant() const noexcept { return kind == static_cast<std::uint8_t>(TensorKind::constant); }
  bool is_encoded() const noexcept { return encoding != static_cast<std::uint16_t>(WeightEncoding::raw); }
};

struct OpDesc {
  std::uint8_t code = 0;
  std::uint8_t activation = 0;
  std::uint8_t padding = 0;
  std::uint8_t num_inputs = 0;
  std::int32_t stride_h = 0;
  std::int32_t stride_w = 0;
  std::int32_t filter_h = 0;
  std::int32_t filter_w = 0;
  std::int32_t dilation_h = 0;
  std::int32_t dilation_w = 0;
  std::int32_t param = 0;
  std::uint16_t output = kNoTensor;
  std::uint16_t reserved16 = 0;
  std::uint16_t inputs[kMaxOpInputs] = {kNoTensor, kNoTensor, kNoTensor, kNoTensor,
                                        kNoTensor, kNoTensor, kNoTensor, kNoTensor};
  std::uint32_t reserved32 = 0;
};

// shape_ok() for untrusted dims: every dim >= 1 and the element count <=
// INT32_MAX, with the product formed step by step so that no intermediate
// can overflow. (kernels.hpp's shape_ok multiplies all four dims in int64
// first, which overflows for dims near 2^31; the verifier therefore calls
// this one, and the kernels only ever see shapes it accepted.)
constexpr bool shape_valid(const Shape4& s) noexcept {
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) return false;
  std::int64_t size = s.n;
  const std::int32_t rest[3] = {s.h, s.w, s.c};
  for (const std::int32_t d : rest) {
    size *= d;  // size <= INT32_MAX and d < 2^31 before: < 2^62
    if (size > INT32_MAX) return false;
  }
  return true;
}

// Element count of a valid shape (shape_valid), 0 otherwise.
constexpr std::uint64_t element_count(const Shape4& s) noexcept {
  return shape_valid(s) ? static_cast<std::uint64_t>(s.n) * static_cast<std::uint64_t>(s.h) *
                              static_cast<std::uint64_t>(s.w) * static_cast<std::uint64_t>(s.c)
                        : 0;
}

// Bytes of a tensor's decoded data: element count * element size; 0 for an
// invalid shape. (An encoded constant's stored length is its data_length.)
inline std::uint64_t tensor_bytes(const TensorDesc& t) noexcept {
  return element_count(t.shape) * (t.type == static_cast<std::uint8_t>(TensorType::int8) ? 1 : 4);
}

// A view of a blob's tables. Reads are unchecked: construct it only over a
// blob that verify() accepted (or, inside the verifier, after the bounds the
// verifier has already established).
class ModelView {
 public:
  ModelView() = default;
  ModelView(const std::uint8_t* blob, std::size_t size) noexcept : blob_(blob), size_(size) {
    tensor_count_ = detail::load_u32(blob + layout::kTensorCount);
    op_count_ = detail::load_u32(blob + layout::kOpCount);
    input_count_ = detail::load_u32(blob + layout::kInputCount);
    output_count_ = detail::load_u32(blob + layout::kOutputCount);
  }

  const std::uint8_t* bytes() const noexcept { return blob_; }
  std::size_t size() const noexcept { return size_; }
  std::uint32_t tensor_count() const noexcept { return tensor_count_; }
  std::uint32_t op_count() const noexcept { return op_count_; }
  std::uint32_t input_count() const noexcept { return input_count_; }
  std::uint32_t output_count() const noexcept { return output_count_; }

  static constexpr std::uint64_t tensor_table_offset() noexcept { return kHeaderBytes; }
  std::uint64_t op_table_offset() const noexcept {
    return kHeaderBytes + std::uint64_t{tensor_count_} * kTensorRecordBytes;
  }
  std::uint64_t io_table_offset() const noexcept {
    return op_table_offset() + std::uint64_t{op_count_} * kOpRecordBytes;
  }
  std::uint64_t tables_end() const noexcept {
    return io_table_offset() + (std::uint64_t{input_count_} + output_count_) * kIoEntryBytes;
  }

  TensorDesc tensor(std::uint32_t i) const noexcept {
    const std::uint8_t* p = blob_ + kHeaderBytes + static_cast<std::size_t>(i) * kTensorRecordBytes;
    TensorDesc t;
    t.shape = Shape4{detail::load_i32(p), detail::load_i32(p + 4), detail::load_i32(p + 8), detail::load_i32(p + 12)};
    t.scale = detail::load_f32(p + layout::kTScale);
    t.zero_point = detail::load_i32(p + layout::kTZeroPoint);
    t.type = p[layout::kTType];
    t.kind = p[layout::kTKind];
    t.encoding = detail::load_u16(p + layout::kTEncoding);
    t.data_offset = detail::load_u32(p + layout::kTDataOffset);
    t.data_length = detail::load_u32(p + layout::kTDataLength);
    t.reserved32 = detail::load_u32(p + layout::kTReserved32);
    return t;
  }

  OpDesc op(std::uint32_t i) const noexcept {
    const std::uint8_t* p = blob_ + static_cast<std::size_t>(op_table_offset()) + static_cast<std::size_t>(i) * kOpRecordBytes;
    OpDesc o;
    o.code = p[layout::kOCode];
    o.activation = p[layout::kOActivation];
    o.padding = p[layout::kOPadding];
    o.num_inputs = p[layout::kONumInputs];
    o.stride_h = detail::load_i32(p + layout::kOStrideH);
    o.stride_w = detail::load_i32(p + layout::kOStrideW);
    o.filter_h = detail::load_i32(p + layout::kOFilterH);
    o.filter_w = detail::load_i32(p + layout::kOFilterW);
    o.dilation_h = detail::load_i32(p + layout::kODilationH);
    o.dilation_w = detail::load_i32(p + layout::kODilationW);
    o.param = detail::load_i32(p + layout::kOParam);
    o.output = detail::load_u16(p + layout::kOOutput);
    o.reserved16 = detail::load_u16(p + layout::kOReserved16);
    for (std::uint32_t k = 0; k < kMaxOpInputs; ++k) o.inputs[k] = detail::load_u16(p + layout::kOInputs + 2 * k);
    o.reserved32 = detail::load_u32(p + layout::kOReserved32);
    return o;
  }

  std::uint32_t input_id(std::uint32_t i) const noexcept {
    return detail::load_u32(blob_ + static_cast<std::size_t>(io_table_offset()) + kIoEntryBytes * i);
  }
  std::uint32_t output_id(std::uint32_t i) const noexcept {
    return detail::load_u32(blob_ + static_cast<std::size_t>(io_table_offset()) + kIoEntryBytes * (input_count_ + i));
  }

  // Constant data of tensor t (verified offset).
  const std::uint8_t* data(const TensorDesc& t) const noexcept { return blob_ + t.data_offset; }

 private:
  const std::uint8_t* blob_ = nullptr;
  std::size_t size_ = 0;
  std::uint32_t tensor_count_ = 0;
  std::uint32_t op_count_ = 0;
  std::uint32_t input_count_ = 0;
  std::uint32_t output_count_ = 0;
};

// Writes `v` in decimal into buf[pos..], returns the new position (always
// leaves room for the terminating NUL, which the caller writes).
namespace detail {
inline std::size_t append_str(char* buf, std::size_t cap, std::size_t pos, const char* s) noexcept {
  while (s != nullptr && *s != '\0' && pos + 1 < cap) buf[pos++] = *s++;
  return pos;
}
inline std::size_t append_u64(char* buf, std::size_t cap, std::size_t pos, std::uint64_t v) noexcept {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0 && pos + 1 < cap) buf[pos++] = tmp[--n];
  return pos;
}
}  // namespace detail

}  // namespace fleetdl::micro
