// Catch2 v2 needs one translation unit to define main; v3 links Catch2WithMain instead.
#ifdef MUE_CATCH2_V2_MAIN
#define CATCH_CONFIG_MAIN
#endif
#include "tests/catch.h"
