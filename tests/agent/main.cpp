// tests/agent/main.cpp — the Catch2 main of agent_tests (the POSIX device
// agent, device_ports/posix). Test cases live in tests/agent/test_agent.cpp.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
