package images

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestParseDockerfile(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		want    []Stage
		wantErr string
	}{{
		name: "stages, flags, continuation, comments, exec and shell forms",
		src: `# syntax=docker/dockerfile:1
FROM debian:bookworm AS stage
RUN apt-get update \
 # a comment inside a continuation
 && apt-get install -y gcc
FROM debian:bookworm-slim
COPY --from=stage --chmod=0555 /a /b
USER 999:999
CMD ["redis-server", "--protected-mode", "no"]
`,
		want: []Stage{
			{Name: "stage", From: "debian:bookworm", Instr: []Instruction{
				{Line: 3, Cmd: "RUN", Flags: map[string]string{}, Args: []string{"apt-get update   && apt-get install -y gcc"}},
			}},
			{From: "debian:bookworm-slim", Instr: []Instruction{
				{Line: 7, Cmd: "COPY", Flags: map[string]string{"from": "stage", "chmod": "0555"}, Args: []string{"/a", "/b"}},
				{Line: 8, Cmd: "USER", Flags: map[string]string{}, Args: []string{"999:999"}},
				{Line: 9, Cmd: "CMD", Flags: map[string]string{}, Args: []string{"redis-server", "--protected-mode", "no"}, JSON: true},
			}},
		},
	}, {
		name:    "unsupported instruction",
		src:     "FROM scratch\nADD x /x\n",
		wantErr: "instruction ADD is not supported",
	}, {
		name:    "instruction before FROM",
		src:     "USER 1\nFROM scratch\n",
		wantErr: "USER before the first FROM",
	}, {
		name:    "flag without value",
		src:     "FROM scratch\nCOPY --link a /a\n",
		wantErr: `COPY flag "--link": want --name=value`,
	}, {
		name:    "bad exec form",
		src:     "FROM scratch\nCMD [\"a\",\n",
		wantErr: "exec form is not a JSON string array",
	}, {
		name:    "no FROM",
		src:     "# nothing\n",
		wantErr: "no FROM",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDockerfileBytes("Dockerfile", []byte(tt.src))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Stages) != len(tt.want) {
				t.Fatalf("%d stages, want %d: %+v", len(d.Stages), len(tt.want), d.Stages)
			}
			for i, st := range d.Stages {
				w := tt.want[i]
				if st.Name != w.Name || st.From != w.From || len(st.Instr) != len(w.Instr) {
					t.Fatalf("stage %d = %+v, want %+v", i, st, w)
				}
				for j, in := range st.Instr {
					wi := w.Instr[j]
					if in.Line != wi.Line || in.Cmd != wi.Cmd || !slices.Equal(in.Args, wi.Args) || in.JSON != wi.JSON || len(in.Flags) != len(wi.Flags) {
						t.Errorf("stage %d instruction %d = %+v, want %+v", i, j, in, wi)
					}
					for k, v := range wi.Flags {
						if in.Flags[k] != v {
							t.Errorf("stage %d instruction %d flag %s = %q, want %q", i, j, k, in.Flags[k], v)
						}
					}
				}
			}
		})
	}
}

// TestDockerfilesAreBuildable ties the images built here to deploy/images: every instruction
// of each Dockerfile's final stage is one Build carries out, its base is one Bases makes, each
// context file is a ./cmd program, and each COPY --from is a stage output the builder
// provides. A Dockerfile change the builder cannot follow fails here, not in a cluster.
func TestDockerfilesAreBuildable(t *testing.T) {
	root := repoRoot(t)
	for _, tt := range []struct {
		dockerfile   string
		wantContext  []string
		stageOutputs []string
	}{
		{WebhookDockerfile, []string{"pmem-webhook"}, nil},
		{MemkindDockerfile, []string{"pmem-stage", "pmem-memkind-init"}, MemkindStageOutputs},
		{RedisDockerfile, nil, nil},
	} {
		t.Run(tt.dockerfile, func(t *testing.T) {
			d, err := ParseDockerfile(filepath.Join(root, tt.dockerfile))
			if err != nil {
				t.Fatal(err)
			}
			final := d.Final()
			if final.From != BaseDebianSlim && final.From != BaseDistrolessStatic {
				t.Errorf("final stage FROM %s: the builder knows %s and %s", final.From, BaseDebianSlim, BaseDistrolessStatic)
			}
			if got := ContextBinaries(d); !slices.Equal(got, tt.wantContext) {
				t.Errorf("context files %q, want %q", got, tt.wantContext)
			}
			for _, name := range ContextBinaries(d) {
				if _, err := os.Stat(filepath.Join(root, "cmd", name)); err != nil {
					t.Errorf("context file %s: no ./cmd/%s to build it from", name, name)
				}
			}
			for _, in := range final.Instr {
				switch in.Cmd {
				case "COPY":
					if from := in.Flags["from"]; from != "" && !slices.Contains(tt.stageOutputs, from+":"+in.Args[0]) {
						t.Errorf("line %d: COPY --from=%s %s is not a stage output the builder provides (%q)", in.Line, from, in.Args[0], tt.stageOutputs)
					}
				case "RUN":
					if in.JSON {
						t.Errorf("line %d: exec-form RUN is not supported", in.Line)
					}
				case "USER", "WORKDIR", "EXPOSE", "CMD", "ENTRYPOINT", "ENV":
				default:
					t.Errorf("line %d: %s in the final stage is not carried out by Build", in.Line, in.Cmd)
				}
			}
		})
	}
}

// TestBuildStatic builds a small image on the distroless stand-in and reads the archive back
// the way containerd will: config from the Dockerfile, files with their --chmod modes.
func TestBuildStatic(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("building image trees needs root (file owners)")
	}
	dir := t.TempDir()
	df := `FROM gcr.io/distroless/static-debian12:nonroot
COPY --chmod=0555 prog /prog
COPY --chmod=0444 data/ /usr/share/data
USER 65532:65532
EXPOSE 9443 8080
ENTRYPOINT ["/prog"]
`
	if err := os.MkdirAll(filepath.Join(dir, "repo", "img"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "repo", "img", "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(filepath.Join(data, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "sub", "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := Build(context.Background(), Options{RepoRoot: filepath.Join(dir, "repo"), Bases: &Bases{CacheDir: dir}, WorkDir: work},
		Image{Ref: "example/test:1", Dockerfile: "img/Dockerfile", Context: map[string]string{"prog": prog, "data/": data}})
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(b.Archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/prog"}) || cf.Config.Cmd != nil {
		t.Errorf("config user %q entrypoint %q cmd %q", cf.Config.User, cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if _, ok := cf.Config.ExposedPorts["9443/tcp"]; !ok || len(cf.Config.ExposedPorts) != 2 {
		t.Errorf("exposed ports %v, want 9443/tcp and 8080/tcp", cf.Config.ExposedPorts)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
	}
	for name, mode := range map[string]int64{"prog": 0o555, "usr/share/data/sub/f": 0o444, "etc/passwd": 0o644} {
		h, ok := files[name]
		if !ok {
			t.Errorf("%s missing from the layer", name)
			continue
		}
		if h.Mode&0o7777 != mode {
			t.Errorf("%s mode %o, want %o", name, h.Mode&0o7777, mode)
		}
	}
	if h := files["home/nonroot/"]; h == nil || h.Uid != 65532 {
		t.Errorf("home/nonroot/ header %+v, want owned by 65532", h)
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "deploy", "images")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root not found")
		}
		dir = parent
	}
}
