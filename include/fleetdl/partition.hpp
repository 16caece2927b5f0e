// fleetdl/partition.hpp — umbrella for model partitioning: NoNN knowledge
// partitioning (Bhardwaj et al., ACM TECS 2019) — the filter activation
// graph, Louvain communities with resolution, and the filter-to-student
// assignment with its JSON manifest; the students, their loss, joint
// training, extraction and per-student costs.
#pragma once

#include "fleetdl/partition/louvain.hpp"
#include "fleetdl/partition/filter_graph.hpp"
#include "fleetdl/partition/assign.hpp"
#include "fleetdl/partition/nonn.hpp"
#include "fleetdl/partition/placement.hpp"
#include "fleetdl/partition/modules.hpp"
