// fleetdl/micro.hpp — the int8 micro runtime's freestanding parts: TFLite
// Micro-exact requantization (micro/quant.hpp) and the int8 reference kernels
// (micro/kernels.hpp). No heap, no exceptions, no RTTI: these headers compile
// for a bare-metal target on their own.
#pragma once

#include "fleetdl/micro/quant.hpp"
#include "fleetdl/micro/kernels.hpp"
