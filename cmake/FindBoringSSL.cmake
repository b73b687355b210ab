# FindBoringSSL: locate BoringSSL, never the system OpenSSL.
#
# Looks in BORINGSSL_ROOT (a self-built BoringSSL: include/ and lib/ or build/) first,
# then in Debian's android-libboringssl-dev layout. Defines the imported targets
# BoringSSL::ssl and BoringSSL::crypto, BORINGSSL_INCLUDE_DIR and BORINGSSL_LIBRARY_DIR.
# The header check rejects OpenSSL: only BoringSSL's base.h defines BORINGSSL_API_VERSION.

set(BORINGSSL_ROOT "" CACHE PATH "Root of a self-built BoringSSL (include/ and lib/ or build/)")

if(BORINGSSL_ROOT)
  set(_bssl_inc_hints "${BORINGSSL_ROOT}/include")
  set(_bssl_lib_hints "${BORINGSSL_ROOT}/lib" "${BORINGSSL_ROOT}/build"
                      "${BORINGSSL_ROOT}/build/ssl" "${BORINGSSL_ROOT}/build/crypto")
  set(_bssl_no_default NO_DEFAULT_PATH)
else()
  set(_bssl_inc_hints /usr/include/android)
  set(_bssl_lib_hints /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/android
                      /usr/lib/x86_64-linux-gnu/android /usr/lib/aarch64-linux-gnu/android)
  set(_bssl_no_default NO_DEFAULT_PATH)
endif()

find_path(BORINGSSL_INCLUDE_DIR openssl/base.h HINTS ${_bssl_inc_hints} ${_bssl_no_default})
find_library(BORINGSSL_SSL_LIBRARY ssl HINTS ${_bssl_lib_hints} ${_bssl_no_default})
find_library(BORINGSSL_CRYPTO_LIBRARY crypto HINTS ${_bssl_lib_hints} ${_bssl_no_default})

set(BORINGSSL_IS_BORINGSSL FALSE)
if(BORINGSSL_INCLUDE_DIR AND EXISTS "${BORINGSSL_INCLUDE_DIR}/openssl/base.h")
  file(STRINGS "${BORINGSSL_INCLUDE_DIR}/openssl/base.h" _bssl_api
       REGEX "^#define BORINGSSL_API_VERSION")
  if(_bssl_api)
    set(BORINGSSL_IS_BORINGSSL TRUE)
  endif()
endif()

if(BORINGSSL_INCLUDE_DIR AND NOT BORINGSSL_IS_BORINGSSL)
  message(FATAL_ERROR
    "${BORINGSSL_INCLUDE_DIR}/openssl/base.h is not BoringSSL (no BORINGSSL_API_VERSION): "
    "this looks like OpenSSL, which smtp-tls-proxy does not support. Install Debian's "
    "android-libboringssl-dev or pass -DBORINGSSL_ROOT=/path/to/boringssl.")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(BoringSSL
  REQUIRED_VARS BORINGSSL_SSL_LIBRARY BORINGSSL_CRYPTO_LIBRARY BORINGSSL_INCLUDE_DIR
  FAIL_MESSAGE "BoringSSL not found: apt-get install android-libboringssl-dev, or pass -DBORINGSSL_ROOT=")

if(BoringSSL_FOUND)
  get_filename_component(BORINGSSL_LIBRARY_DIR "${BORINGSSL_SSL_LIBRARY}" DIRECTORY)
  if(NOT TARGET BoringSSL::crypto)
    add_library(BoringSSL::crypto UNKNOWN IMPORTED)
    set_target_properties(BoringSSL::crypto PROPERTIES
      IMPORTED_LOCATION "${BORINGSSL_CRYPTO_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${BORINGSSL_INCLUDE_DIR}")
  endif()
  if(NOT TARGET BoringSSL::ssl)
    add_library(BoringSSL::ssl UNKNOWN IMPORTED)
    set_target_properties(BoringSSL::ssl PROPERTIES
      IMPORTED_LOCATION "${BORINGSSL_SSL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${BORINGSSL_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES BoringSSL::crypto)
  endif()
endif()
mark_as_advanced(BORINGSSL_INCLUDE_DIR BORINGSSL_SSL_LIBRARY BORINGSSL_CRYPTO_LIBRARY)
