// fleetdl/core.hpp — umbrella for the core: configuration, errors and
// Result<T>, shapes and batch matrices, RNG, bytes, CRC-32, files, a strict
// bounded JSON reader, thread pool.
#pragma once

#include "fleetdl/core/config.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/file.hpp"
#include "fleetdl/core/json.hpp"
#include "fleetdl/core/parallel.hpp"
