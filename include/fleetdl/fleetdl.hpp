// fleetdl/fleetdl.hpp — the whole library: core, nn, data, io.
// Later areas (fl, sim, partition, compress, micro, wire) join here as they land.
#pragma once

#include "fleetdl/core.hpp"
#include "fleetdl/data.hpp"
#include "fleetdl/io.hpp"
#include "fleetdl/nn.hpp"
