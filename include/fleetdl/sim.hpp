// fleetdl/sim.hpp — umbrella for the federated fleet simulator: device
// profiles and the cost model, the simulator, and its JSON experiment config
// (`fleetdl fl simulate`; schema in docs/fl-simulate.md).
#pragma once

#include "fleetdl/sim/profile.hpp"
#include "fleetdl/sim/simulator.hpp"
#include "fleetdl/sim/config.hpp"
