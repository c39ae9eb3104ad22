package patch

import "testing"

// Map keys become JSON Pointer tokens (RFC 6901): "~" and "/" are escaped,
// everything else is kept as is.
func TestEscapePointerToken(t *testing.T) {
	for in, want := range map[string]string{
		"a~b/c":                      "a~0b~1c",
		"pmem.alibabacloud.com/kmem": "pmem.alibabacloud.com~1kmem",
		"plain":                      "plain",
		"~1":                         "~01",
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}
