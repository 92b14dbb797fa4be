/*
 * lua patterns: string.find, match, gmatch and gsub with the matcher of Lua
 * 5.4 (same syntax, same results), except that it counts its steps and
 * charges them to the running call (luart_charge), so a pattern that
 * backtracks on a hostile subject is stopped by the call's budget and
 * deadline instead of stalling the loop thread. Lua's own matcher runs in C
 * where neither the instruction count nor the clock is seen.
 */
#ifndef LUAPAT_PATTERN_H
#define LUAPAT_PATTERN_H

#include <lua.h>

/* Matcher steps charged as one instruction (measured: a step costs about
 * what a VM instruction costs, see lua/README.md "Limits"). */
#define LUAPAT_STEPS_PER_INSTRUCTION 2

/* Replaces the four functions in the global `string` table (also the
 * methods of strings). Call with the string library open. */
void luapat_open(lua_State *L);

#endif
