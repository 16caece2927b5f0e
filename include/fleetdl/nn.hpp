// fleetdl/nn.hpp — umbrella for the neural-network core: nodes, layers,
// composites, Model, losses, optimizers, the training loop and the model zoo.
#pragma once

#include "fleetdl/nn/node.hpp"
#include "fleetdl/nn/dense.hpp"
#include "fleetdl/nn/conv2d.hpp"
#include "fleetdl/nn/pooling.hpp"
#include "fleetdl/nn/batchnorm.hpp"
#include "fleetdl/nn/activation.hpp"
#include "fleetdl/nn/reshape.hpp"
#include "fleetdl/nn/composite.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/loss.hpp"
#include "fleetdl/nn/optim.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/nn/zoo.hpp"
#include "fleetdl/nn/fold.hpp"
