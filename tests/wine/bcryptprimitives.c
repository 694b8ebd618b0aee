/* Test support for running the Windows build under Wine 8, never shipped.
 *
 * Rust's standard library gets random bytes (HashMap seeds) from
 * ProcessPrng in bcryptprimitives.dll, which Windows 10 and later have and
 * Wine 8 lacks. This DLL provides it by calling RtlGenRandom, exported by
 * advapi32 as SystemFunction036. The CI script builds it with mingw into a
 * scratch directory and puts that directory on WINEPATH.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
