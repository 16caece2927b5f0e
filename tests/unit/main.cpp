// tests/unit/main.cpp — the Catch2 main of the unit_tests executable. Test
// cases live in tests/unit/test_*.cpp, listed in tests/unit/meson.build.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
