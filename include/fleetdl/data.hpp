// fleetdl/data.hpp — umbrella for the data area: the IDX (MNIST-format)
// reader, Dataset<S> with the Fashion-MNIST loader, and the federated client
// partitioners (IID, Dirichlet, shards, k labels per client) with their
// statistics. gzip input needs zlib (link with -lz).
#pragma once

#include "fleetdl/data/idx.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/data/partition.hpp"
