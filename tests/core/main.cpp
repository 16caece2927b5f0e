// tests/core/main.cpp — the Catch2 main of the core_tests executable (tests of
// orchestrator/core). Test cases live in tests/core/test_*.cpp.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
