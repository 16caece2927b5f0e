// fleetdl/wire.hpp — the wire protocol between devices and the orchestrator:
// frames and the no-heap stream decoder (wire/frame.hpp), the typed messages
// (wire/messages.hpp), replay / duplicate detection and module chunk assembly
// (wire/session.hpp), and the UDP discovery datagrams, announce and invite
// (wire/announce.hpp). Transport-agnostic: bytes in, bytes out. docs/wire.md
// describes the format byte by byte.
#pragma once

#include "fleetdl/wire/announce.hpp"
#include "fleetdl/wire/frame.hpp"
#include "fleetdl/wire/messages.hpp"
#include "fleetdl/wire/session.hpp"
