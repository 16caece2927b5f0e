// fleetdl/fleetdl.hpp — the whole library: core, nn, data, io, fl.
// Later areas (sim, partition, compress, micro, wire) join here as they land.
#pragma once

#include "fleetdl/core.hpp"
#include "fleetdl/data.hpp"
#include "fleetdl/io.hpp"
#include "fleetdl/nn.hpp"
#include "fleetdl/fl.hpp"
#include "fleetdl/sim.hpp"
