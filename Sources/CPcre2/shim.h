// PCRE2 declares its functions per code unit width; the routes match bytes (8-bit units),
// so the `_8` functions (pcre2_compile_8, pcre2_match_8, ...) are the ones Swift calls.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
