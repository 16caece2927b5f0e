// fleetdl/io.hpp — umbrella for model files (.fdl): encode, verify, decode, save, load.
#pragma once

#include "fleetdl/io/fdl.hpp"
