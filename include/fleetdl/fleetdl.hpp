// fleetdl/fleetdl.hpp — the whole library: core, nn, data, io, fl, sim,
// partition, micro, compress, wire.
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
#include "fleetdl/wire.hpp"
