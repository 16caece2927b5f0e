// fleetdl/micro.hpp — the int8 micro runtime's freestanding parts: TFLite
// Micro-exact requantization (micro/quant.hpp), the int8 reference kernels
// (micro/kernels.hpp), the model blob format (micro/blob.hpp), its verifier
// (micro/verifier.hpp), the greedy-by-size arena planner (micro/planner.hpp)
// and the interpreter (micro/interpreter.hpp). No heap, no exceptions, no
// RTTI: these headers compile for a bare-metal target on their own. The
// host-only blob writer (micro/blob_writer.hpp, std::vector) is not included.
#pragma once

#include "fleetdl/micro/quant.hpp"
#include "fleetdl/micro/kernels.hpp"
#include "fleetdl/micro/blob.hpp"
#include "fleetdl/micro/verifier.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/micro/interpreter.hpp"
