# Turns a text file into a C array: cmake -DIN=x.lua -DOUT=x.h -DNAME=sym -P embed.cmake
file(READ ${IN} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," content "${content}")
file(WRITE ${OUT} "/* generated from ${IN} */\nstatic const unsigned char ${NAME}[] = {${content}};\n")
