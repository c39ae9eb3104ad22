package redischeck

import "testing"

func TestValueSelfCheck(t *testing.T) {
	v := Value("key:000001", 7, 300)
	if len(v) != 300 {
		t.Fatalf("len %d", len(v))
	}
	if ver, err := CheckValue("key:000001", v); err != nil || ver != 7 {
		t.Fatalf("CheckValue: %d %v", ver, err)
	}
	for name, bad := range map[string]string{
		"other key":   Value("key:000002", 7, 300),
		"flipped bit": v[:100] + "X" + v[101:],
		"torn":        v[:150] + Value("key:000001", 8, 300)[150:],
		"truncated":   v[:299],
	} {
		if _, err := CheckValue("key:000001", bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
