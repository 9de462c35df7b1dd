#include <sys/types.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
