// fleetdl/fl.hpp — umbrella for federated learning: the strategy interface,
// FedAvg family, FedProx, FedOpt, SCAFFOLD, FedNova, q-FedAvg, FedBuff,
// HeteroFL, robust aggregation, client selection, differential privacy and
// update codecs. The fleet simulator is in fleetdl/sim.hpp.
#pragma once

#include "fleetdl/fl/strategy.hpp"
#include "fleetdl/fl/client.hpp"
#include "fleetdl/fl/fedavg.hpp"
#include "fleetdl/fl/fedprox.hpp"
#include "fleetdl/fl/fedopt.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/fl/fednova.hpp"
#include "fleetdl/fl/qfedavg.hpp"
#include "fleetdl/fl/fedbuff.hpp"
#include "fleetdl/fl/heterofl.hpp"
#include "fleetdl/fl/robust.hpp"
#include "fleetdl/fl/selection.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/fl/codec.hpp"
