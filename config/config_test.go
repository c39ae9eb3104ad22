package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

func TestLoadPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte("memkindImage: registry.example/memkind:1\nsizeFactor: 3\nallowedStorageClasses: [a, b]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want func(*patch.Config)
	}{
		{"defaults", nil, func(*patch.Config) {}},
		{"file", []string{"--config", file}, func(c *patch.Config) {
			c.MemkindImage, c.SizeFactor, c.AllowedStorageClasses = "registry.example/memkind:1", 3, []string{"a", "b"}
		}},
		{"flag overrides file", []string{"--config", file, "--size-factor", "1.5", "--kmem-node-selector", "x/kmem=true,zone=a"}, func(c *patch.Config) {
			c.MemkindImage, c.SizeFactor, c.AllowedStorageClasses = "registry.example/memkind:1", 1.5, []string{"a", "b"}
			c.KMEMNodeSelector = map[string]string{"x/kmem": "true", "zone": "a"}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f := Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			got, err := f.Load()
			if err != nil {
				t.Fatal(err)
			}
			want := patch.DefaultConfig()
			tc.want(&want)
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("Load() = %+v, want %+v", *got, want)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("memkindImg: typo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--size-factor", "0"}, "sizeFactor 0"},
		{[]string{"--kmem-node-selector", "novalue"}, `entry "novalue" is not key=value`},
		{[]string{"--config", bad}, `unknown field "memkindImg"`},
		{[]string{"--config", "/nonexistent.yaml"}, "read config file"},
	}
	for _, tc := range cases {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f := Register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Load(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: Load() error = %v, want %q", tc.args, err, tc.want)
		}
	}
}
