// fleetdl/fleetdl.hpp — the whole library: core, nn, data, io, fl, sim,
// partition, micro, compress. Later areas (wire) join here as they land.
#pragma once

#include "fleetdl/core.hpp"
#include "fleetdl/data.hpp"
#include "fleetdl/io.hpp"
#include "fleetdl/nn.hpp"
#include "fleetdl/fl.hpp"
#include "fleetdl/sim.hpp"
#include "fleetdl/partition.hpp"
#include "fleetdl/micro.hpp"
#include "fleetdl/compress.hpp"
